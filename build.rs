//! Links the system's SpeexDSP (Debian: `libspeexdsp-dev`), whose echo canceller and
//! preprocessor `src/echo.rs` calls.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = pkg_config::Config::new().atleast_version("1.2").probe("speexdsp") {
        eprintln!(
            "kokichi needs SpeexDSP >= 1.2 for echo cancellation (Debian/Ubuntu: apt install libspeexdsp-dev): {e}"
        );
        std::process::exit(1);
    }
}
