//! `chora prepare` on real files, real SQLite databases and a real HTTP server
//! started on loopback by each test that needs one.
//! One module per subject; `fixtures` holds what they share.

mod cold_warm;
mod failures;
mod fixtures;
mod runner;
