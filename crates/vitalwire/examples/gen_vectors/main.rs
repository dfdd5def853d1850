//! Writes spec/vectors/*.json: `cargo run -p vitalwire --example gen_vectors [DIR]`.

mod transcript;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/vectors").to_string());
    std::fs::create_dir_all(&dir).expect("create the vectors folder");
    for (name, text) in transcript::all() {
        let path = std::path::Path::new(&dir).join(&name);
        std::fs::write(&path, text).expect("write a vector file");
        println!("wrote {}", path.display());
    }
}
