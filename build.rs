// `sqlx::migrate!` embeds ./migrations at compile time, but on stable Rust the compiler does not
// know the macro read those files: without this, a new or edited migration is left out of the
// build until some source file changes (what `sqlx migrate build-script` generates).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
