//! Names on the command line: `NAME` is a unit (`manifest-2`, `analyzer`) or
//! a replicated service (`manifest`: all of its units, in order). Every
//! operator command resolves names here, so each accepts both.

use crate::ctx::Ctx;
use crate::exit;
use crate::failure::Failure;

/// The units `name` stands for, or a failure that lists what there is.
pub fn resolve(ctx: &Ctx, name: &str) -> Result<Vec<String>, Failure> {
    let units = ctx.config.units_of(name);
    if units.is_empty() {
        let mut known: Vec<String> = ctx.config.services.keys().cloned().collect();
        known.sort();
        return Err(Failure::new(
            exit::FAILURE,
            "NOT_FOUND",
            format!(
                "no service or unit `{name}` in {}",
                ctx.config_path.display()
            ),
        )
        .cause(format!("it has: {}", known.join(", "))));
    }
    Ok(units)
}
