//! `sqlx::migrate!("../migrations")` (the test harness) embeds the migration
//! files at compile time; stable Rust cannot tell cargo about a *new* file, so
//! without this a fresh migration would be missing until something else changes.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
