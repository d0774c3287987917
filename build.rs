//! Build script: finds the outside programs some integration tests drive, so
//! that a test whose programs are missing is ignored with its reason (never
//! reported as passed without running). Sets, for the tests only:
//!
//! - `abide_browser`: node, Chromium and `tests/browser/node_modules`
//!   (`npm ci --prefix tests/browser`) are there;
//! - `abide_python`: `python3` is on PATH;
//! - `abide_curl`: `curl` is on PATH;
//! - `abide_nginx`: `nginx` is on PATH or in /usr/sbin;
//! - `abide_redis`: `redis-server` is on PATH or in /usr/bin (the tests of
//!   `--redis` start their own on a free port), and `openssl` is on PATH;
//! - `abide_cross`: the target is not the host (tests then run under
//!   qemu-user, where resident memory is not abide's alone);
//! - `abide_root`: the build runs as root, so tests can run abide as
//!   another user under a task limit (root is exempt from `RLIMIT_NPROC`).
//!
//! `ABIDE_REQUIRE_TOOLS=1` (set by `.ci/run`) makes a missing one a build
//! failure, so CI cannot go green without running those tests. It runs again
//! when PATH, that variable, a found program or the npm packages change, and
//! when `/usr/bin` changes while a program is missing.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=ABIDE_CHROMIUM");
    println!("cargo::rerun-if-env-changed=ABIDE_REQUIRE_TOOLS");
    let required = env::var("ABIDE_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
    let packages = Path::new("tests/browser/node_modules/playwright-core");
    let chromium = env::var_os("ABIDE_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"));
    let tools = [
        (
            "abide_browser",
            vec![
                ("node", on_path("node")),
                ("chromium", chromium),
                (
                    "tests/browser/node_modules",
                    Some(packages.to_path_buf()).filter(|p| p.is_dir()),
                ),
            ],
        ),
        ("abide_python", vec![("python3", on_path("python3"))]),
        ("abide_curl", vec![("curl", on_path("curl"))]),
        (
            "abide_nginx",
            vec![(
                "nginx",
                on_path("nginx")
                    .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file())),
            )],
        ),
        (
            "abide_redis",
            vec![
                (
                    "redis-server",
                    on_path("redis-server").or_else(|| {
                        Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file())
                    }),
                ),
                // Makes the certificates of the TLS test.
                ("openssl", on_path("openssl")),
            ],
        ),
    ];
    // A cross build's tests run under qemu-user (make test-pi), where a
    // process's resident memory is the emulator's as much as abide's.
    println!("cargo::rustc-check-cfg=cfg(abide_cross)");
    if env::var("TARGET").ok() != env::var("HOST").ok() {
        println!("cargo::rustc-cfg=abide_cross");
    }
    println!("cargo::rustc-check-cfg=cfg(abide_root)");
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            == Some("0")
    });
    if root {
        println!("cargo::rustc-cfg=abide_root");
    }
    let mut missing_any = false;
    for (cfg, needs) in tools {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let missing: Vec<&str> = needs
            .iter()
            .filter(|(_, found)| found.is_none())
            .map(|(name, _)| *name)
            .collect();
        for (_, found) in &needs {
            if let Some(path) = found {
                println!("cargo::rerun-if-changed={}", path.display());
            }
        }
        if missing.is_empty() {
            println!("cargo::rustc-cfg={cfg}");
        } else if required {
            panic!(
                "ABIDE_REQUIRE_TOOLS=1, but tests gated by {cfg} cannot run: missing {}",
                missing.join(", ")
            );
        } else {
            missing_any = true;
        }
    }
    if missing_any {
        // An install lands there; the npm packages land under tests/browser.
        println!("cargo::rerun-if-changed=/usr/bin");
        println!("cargo::rerun-if-changed=/usr/sbin");
        println!("cargo::rerun-if-changed=tests/browser");
    }
}

/// The first executable file called `name` in a PATH directory.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
