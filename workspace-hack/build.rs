// Present so that the build-dependencies of this crate take part in feature resolution.
fn main() {}
