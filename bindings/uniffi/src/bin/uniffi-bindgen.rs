//! Generates the Kotlin and Swift sources from the compiled library:
//! `cargo run -p vitalwire-uniffi --bin uniffi-bindgen -- generate --library target/debug/libvitalwire_uniffi.so --language kotlin --out-dir DIR`.
fn main() {
    uniffi::uniffi_bindgen_main()
}
