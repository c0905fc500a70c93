//! `sqlx::migrate!("./migrations")` embeds the migration files at compile
//! time; stable Rust cannot tell cargo about a *new* file, so without this a
//! fresh migration would be missing from `nova-streaming migrate` until some
//! source file changed.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
