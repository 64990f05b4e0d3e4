//! Auth as DESIGN.md §5 says: scoped API keys, admin JWTs, open reads.

use crate::{Backend, Registry, assert_error};
use chora_api::auth::{AdminClaims, mint_admin_token, sign_admin_claims, unix_seconds};
use serde_json::json;
use std::time::Duration;

struct Authed {
    r: Registry,
    secret: String,
    analyzer_key: String,
    storage_key: String,
}

fn start(b: Backend) -> Authed {
    let dir = chora_testkit::temp_dir();
    let (path, pairs) = chora_testkit::write_credentials(dir.path(), &["analyzer", "storage"]);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let creds = path.display().to_string();
    let r = Registry::start_on(b, dir, "127.0.0.1:0", &["--credentials", &creds]);
    Authed {
        r,
        secret: get("jwt_secret"),
        analyzer_key: get("api_key_analyzer"),
        storage_key: get("api_key_storage"),
    }
}

fn body(name: &str) -> serde_json::Value {
    json!({"name": name, "version": "1", "interfaces": {"REST": "http://127.0.0.1:9"}})
}

async fn writes_need_a_valid_token_and_change_nothing_without_one(b: Backend) {
    let a = start(b);
    let r = &a.r;
    let missing = r.post("/v1/services", &body("analyzer"), None).await;
    assert_error(&missing, 401);
    assert_error(
        &r.post("/v1/services", &body("analyzer"), Some("not-a-key"))
            .await,
        401,
    );
    let resp = r
        .http
        .post(r.url("/v1/services"))
        .header("authorization", "Basic abc")
        .json(&body("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some("Bearer")
    );
    assert_error(&crate::status_json(resp).await, 401);
    // Reads are open.
    let (s, list) = r.get("/v1/services").await;
    assert_eq!(
        (s, list),
        (200, json!([])),
        "a refused write stored nothing"
    );
}

async fn api_keys_act_only_on_their_own_service(b: Backend) {
    let a = start(b);
    let r = &a.r;
    let (s, reg) = r
        .post("/v1/services", &body("analyzer"), Some(&a.analyzer_key))
        .await;
    assert_eq!(s, 201, "{reg}");
    let id = reg["id"].as_str().unwrap();
    let forbidden = r
        .post("/v1/services", &body("storage"), Some(&a.analyzer_key))
        .await;
    assert_error(&forbidden, 403);

    let hb = format!("/v1/services/analyzer/{id}/heartbeat");
    assert_eq!(r.put(&hb, None, Some(&a.analyzer_key)).await.0, 204);
    assert_error(&r.put(&hb, None, Some(&a.storage_key)).await, 403);
    assert_error(&r.put(&hb, None, None).await, 401);

    let del = format!("/v1/services/analyzer/{id}");
    assert_error(&r.delete(&del, Some(&a.storage_key)).await, 403);
    assert_error(&r.delete(&del, None).await, 401);
    assert_eq!(
        r.get("/v1/services/analyzer").await.0,
        200,
        "refused deletes removed nothing"
    );
    assert_eq!(r.delete(&del, Some(&a.analyzer_key)).await.0, 204);
}

async fn admin_jwts_may_do_anything_until_they_expire(b: Backend) {
    let a = start(b);
    let r = &a.r;
    let admin = mint_admin_token(&a.secret, "ops", Duration::from_secs(60));
    let (s, reg) = r
        .post("/v1/services", &body("anything"), Some(&admin))
        .await;
    assert_eq!(s, 201, "{reg}");
    let id = reg["id"].as_str().unwrap();
    assert_eq!(
        r.put(
            &format!("/v1/services/anything/{id}/heartbeat"),
            None,
            Some(&admin)
        )
        .await
        .0,
        204
    );

    let forged = mint_admin_token("some-other-secret", "ops", Duration::from_secs(60));
    assert_error(
        &r.post("/v1/services", &body("x"), Some(&forged)).await,
        401,
    );
    // The raw secret is not a token (the seed sent it as one; chora does not).
    assert_error(
        &r.post("/v1/services", &body("x"), Some(&a.secret)).await,
        401,
    );

    let now = unix_seconds();
    let expired = sign_admin_claims(
        &a.secret,
        &AdminClaims {
            sub: "ops".into(),
            iat: now - 120,
            exp: now - 60,
        },
    );
    let got = r.post("/v1/services", &body("x"), Some(&expired)).await;
    assert_error(&got, 401);
    assert_eq!(got.1["error"], "token_expired");

    assert_eq!(
        r.delete(&format!("/v1/services/anything/{id}"), Some(&admin))
            .await
            .0,
        204
    );
}

#[tokio::test]
async fn the_server_refuses_to_start_without_credentials_unless_told() {
    let dir = chora_testkit::temp_dir();
    let (code, _out, err) = crate::run_chora(
        dir.path(),
        &["manifest", "serve", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("[CONFIG_ERROR]") && err.contains("--no-auth"),
        "{err}"
    );

    std::fs::write(dir.path().join("bad.json"), "{\"api_key_a\": \"x\"}").unwrap();
    let (code, _out, err) = crate::run_chora(
        dir.path(),
        &[
            "manifest",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--credentials",
            "bad.json",
        ],
        &[],
    );
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("bad.json") && err.contains("jwt_secret"),
        "{err}"
    );
}

crate::contract!(
    writes_need_a_valid_token_and_change_nothing_without_one,
    api_keys_act_only_on_their_own_service,
    admin_jwts_may_do_anything_until_they_expire,
);
