fn main() {
    // The migrations are embedded in the binary: a new V2__*.sql must rebuild it.
    println!("cargo:rerun-if-changed=migrations");
}
