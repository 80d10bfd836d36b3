//! The shipping files: the systemd unit passes systemd's own checks, and every
//! path the Dockerfile and compose file copy or mount exists in the repository
//! (no Docker engine runs here, so this is what can be checked).

use std::process::Command;

use crate::common::*;

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo().join("systemd/edge.service")).unwrap();
    // verify checks that ExecStart= binaries exist: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("edge.service");
    std::fs::write(
        &local,
        unit.replace("/usr/local/bin/edge", &edge_bin().display().to_string()),
    )
    .unwrap();
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .expect("systemd-analyze");
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&v)
    );

    let s = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(repo().join("systemd/edge.service"))
        .output()
        .unwrap();
    let out = text(&s);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{out}"));
    let score: f64 = line
        .split("edge.service:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    println!("{line}");
    assert!(score <= 2.0, "exposure {score} > 2.0: {out}");
    for key in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "StateDirectory=edge",
        "UMask=0077",
    ] {
        assert!(unit.contains(key), "{key} missing");
    }
}

#[test]
fn docker_files_refer_only_to_paths_that_exist() {
    let root = repo();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root.join(src).exists(), "Dockerfile copies missing {src}");
        }
    }
    // compose builds with the repository as context: without these, target/
    // (gigabytes) and acme-state/ (keys) would be sent to the engine.
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for dir in ["target/", "acme-state/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == dir),
            ".dockerignore lacks {dir}"
        );
    }
    // The binary the image ships is the one scripts/build-release writes.
    let script = std::fs::read_to_string(root.join("scripts/build-release")).unwrap();
    assert!(script.contains("built $ROOT/target/pgo/release/edge"));
    assert!(
        dockerfile.contains("COPY --from=build /src/target/pgo/release/edge /usr/local/bin/edge")
    );
    let flask = root.join("backends/flask");
    let fd = std::fs::read_to_string(flask.join("Dockerfile")).unwrap();
    for line in fd.lines().filter(|l| l.starts_with("COPY ")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                flask.join(src).exists(),
                "backends/flask/Dockerfile copies missing {src}"
            );
        }
    }
    let compose = std::fs::read_to_string(flask.join("compose.yaml")).unwrap();
    for line in compose.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("- ../") {
            let host = rest.split(':').next().unwrap();
            if host == "../config/kek" {
                // Made by the user (random bytes), as the file's comment says.
                continue;
            }
            assert!(
                flask.join(format!("../{host}")).exists(),
                "compose mounts missing {host}"
            );
        }
        if let Some(ctx) = line.strip_prefix("context: ") {
            assert!(
                flask.join(ctx).join("Dockerfile").exists(),
                "compose build context {ctx} has no Dockerfile"
            );
        }
    }
    for svc in ["website1:", "website2:", "website3:", "edge:"] {
        assert!(compose.contains(svc), "{svc} missing from compose.yaml");
    }
    // The optional fleet: three etcd members and three edges, under a
    // profile, reading the shipped fleet config and the user's key file.
    for svc in [
        "etcd-1:", "etcd-2:", "etcd-3:", "edge-1:", "edge-2:", "edge-3:",
    ] {
        assert!(compose.contains(svc), "{svc} missing from compose.yaml");
    }
    assert!(compose.contains("profiles: [fleet]"));
    assert!(compose.contains("../../config/fleet.toml:/etc/edge/edge.toml:ro"));
    let fleet = edge::config::load(&root.join("config/fleet.toml")).unwrap();
    let cluster = fleet.cluster.as_ref().unwrap();
    for (i, ep) in cluster.endpoints.iter().enumerate() {
        assert_eq!(ep, &format!("http://etcd-{}:2379", i + 1));
    }
    assert_eq!(
        cluster.key_encryption_key_file,
        std::path::PathBuf::from("/etc/edge/kek")
    );
    // The config the image and compose ship is valid and matches the tutorial.
    let cfg = edge::config::load(&root.join("config/edge.toml")).unwrap();
    assert_eq!(cfg.sites[0].domains, vec!["flask.ashna.online"]);
    assert_eq!(
        cfg.sites[0]
            .upstreams
            .iter()
            .map(|u| u.addr.as_str())
            .collect::<Vec<_>>(),
        ["website1:5000", "website2:5000", "website3:5000"]
    );
    assert_eq!(cfg.state_dir, std::path::PathBuf::from("/var/lib/edge"));
}

/// The Dockerfile's build stage runs scripts/build-release, which runs
/// `bench/run --train`; no engine runs here to build the image, so at least
/// both must parse and the trainer must refuse to run without its output.
#[test]
fn the_release_build_scripts_parse() {
    let root = repo();
    let bash = Command::new("bash")
        .arg("-n")
        .arg(root.join("scripts/build-release"))
        .output()
        .unwrap();
    assert!(bash.status.success(), "{}", text(&bash));
    let train = Command::new("python3")
        .arg(root.join("bench/run"))
        .args(["--train", "/nonexistent"])
        .output()
        .unwrap();
    let err = text(&train);
    assert_eq!(train.status.code(), Some(2), "{err}");
    assert!(err.contains("--train needs --profile-out DIR"), "{err}");
}
