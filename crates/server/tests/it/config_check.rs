//! `berth config check FILE`: a file that `berth serve` would accept passes
//! with `FILE: OK`; anything else fails with the key and the reason. And
//! `berth serve` refuses what the check refuses, for the same reason.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::harness::{berth_command, spawn_server};

/// Runs `berth config check FILE` with `envs`; returns (success, stdout, stderr).
fn check(file: &Path, envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = berth_command();
    cmd.args(["config", "check"]).arg(file).envs(envs.iter().copied());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd.output().expect("running berth config check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `toml` to a file in `dir`.
fn config_file(dir: &tempfile::TempDir, toml: &str) -> PathBuf {
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, toml).expect("writing the configuration");
    file
}

/// Asserts that checking `toml` fails and that one line of the report is
/// about `key` and says `reason`.
fn assert_refused(toml: &str, key: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&dir, toml);
    let (ok, stdout, stderr) = check(&file, &[]);
    assert!(!ok, "accepted:\n{toml}\nstdout: {stdout}");
    assert!(
        stderr
            .lines()
            .any(|line| line.trim_start().starts_with(&format!("{key}: ")) && line.contains(reason)),
        "no line `{key}: ...{reason}...` in:\n{stderr}"
    );
}

#[test]
fn a_good_file_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    // Stores, routes and upstreams are checked without being reached: no
    // bucket, database or upstream exists here.
    let file = config_file(
        &dir,
        r#"
listen = "127.0.0.1:5000"
[auth]
mode = "token"
anonymous = ["public/**"]
[auth.token]
lifetime_secs = 600
[meta]
backend = "postgres"
url = "postgres://berth:secret@db.invalid:5432/berth"
[storage]
backend = "s3"
s3 = { bucket = "berth", endpoint = "https://s3.invalid", region = "us-east-1" }
[storage.stores.team-a]
backend = "filesystem"
[[storage.routes]]
match = "team-a/**"
store = "team-a"
[retention.policies."**"]
keep_last = 10
untagged = 7
[[lifecycle.namespaces]]
pattern = "ci/**"
keep_latest = true
[[proxy.upstreams]]
name = "hub"
url = "https://registry.invalid"
host = "docker.io"
"#,
    );
    let (ok, stdout, stderr) = check(&file, &[]);
    assert!(ok, "refused: {stderr}");
    assert_eq!(stdout, format!("{}: OK\n", file.display()));
}

#[test]
fn the_shipped_example_is_ok() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/berth.example.toml");
    let (ok, stdout, stderr) = check(&example, &[]);
    assert!(ok, "refused: {stderr}");
    assert!(stdout.ends_with(": OK\n"), "{stdout}");
}

#[test]
fn a_value_of_the_wrong_type_is_reported_with_its_key() {
    assert_refused(
        "[auth.token]\nlifetime_secs = \"x\"\n",
        "auth.token.lifetime_secs",
        "invalid type: found string \"x\", expected u64",
    );
    assert_refused(
        "[log]\nformat = \"fancy\"\n",
        "log.format",
        "unknown value `fancy` (one of: auto, json, pretty)",
    );
}

#[test]
fn a_syntax_error_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&dir, "[auth]\nmode = \"token\"\n[log\n");
    let (ok, _, stderr) = check(&file, &[]);
    assert!(!ok);
    assert!(stderr.contains("TOML parse error at line 3"), "{stderr}");
}

#[test]
fn an_unknown_key_is_reported_with_its_path() {
    assert_refused("[proxy]\nfreshnes_secs = 60\n", "proxy.freshnes_secs", "unknown key");
    assert_refused("lisen = \"127.0.0.1:5000\"\n", "lisen", "unknown key");
    assert_refused(
        "[storage.s3]\nbucket = \"b\"\nbuckit = \"c\"\n",
        "storage.s3.buckit",
        "unknown key",
    );
}

#[test]
fn a_bad_environment_variable_is_reported_with_its_key_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&dir, "");
    let (ok, _, stderr) = check(&file, &[("BERTH_GC__GRACE_SECS", "soon")]);
    assert!(!ok);
    assert!(
        stderr.contains("gc.grace_secs: invalid type") && stderr.contains("environment"),
        "{stderr}"
    );
}

#[test]
fn semantic_errors_are_reported_with_their_keys_all_at_once() {
    let toml = r#"
[retention.policies."team/**"]
keep_days = 0
[[storage.routes]]
match = "team/**"
store = "nowhere"
"#;
    assert_refused(
        toml,
        "retention.policies.\"team/**\"",
        "keep_days must be between 1 and 36500",
    );
    assert_refused(toml, "storage.routes", "\"nowhere\"");
    assert_refused(
        "[[proxy.upstreams]]\nurl = \"https://r.invalid\"\n",
        "proxy.upstreams",
        "needs a name",
    );
    assert_refused("[storage]\nbackend = \"s3\"\n", "storage.s3", "needs an s3 section");
    assert_refused("[meta]\nbackend = \"postgres\"\n", "meta.url", "needs meta.url");
    assert_refused("[auth]\nanonymous = [\"UPPER/*\"]\n", "auth", "auth.anonymous");
    assert_refused(
        "[[lifecycle.namespaces]]\npattern = \"Team/*\"\n",
        "lifecycle.namespaces",
        "\"Team/*\"",
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let (ok, stdout, stderr) = check(&missing, &[]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("absent.toml: no such file"), "{stderr}");
}

#[test]
fn serve_refuses_what_the_check_refuses_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&dir, "[retention.policies.\"**\"]\nkeep_days = 0\n");
    let mut cmd = berth_command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&file);
    let failure = match spawn_server(cmd) {
        Ok(_) => panic!("berth served with keep_days = 0"),
        Err(f) => f,
    };
    assert!(
        failure
            .stderr
            .contains("retention.policies.\"**\": keep_days must be between"),
        "{}",
        failure.stderr
    );
    assert!(!dir.path().join("data").exists(), "nothing was opened or created");
}
