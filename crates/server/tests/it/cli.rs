//! The command line: `--version`, start-up failures that must end in a clear
//! message and a non-zero exit (never a panic), and configuration sources.
//! Each server runs on the stores of the run's mode (see [`Stores`]).

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::harness::{berth_command, client, scaleout, spawn_server, wait_timeout, Image, Stores, OCI_MANIFEST};

/// Runs a command that is expected to exit by itself; returns (status, stdout, stderr).
fn run_to_exit(mut cmd: Command) -> (ExitStatus, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning berth");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let Some(status) = wait_timeout(&mut child, Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("berth did not exit within 20 s; stderr: {}", err.join().unwrap());
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// `berth serve --data-dir DATA_DIR` on `stores`.
fn serve(data_dir: &std::path::Path, stores: &Stores) -> Command {
    let mut cmd = berth_command();
    cmd.arg("serve").arg("--data-dir").arg(data_dir);
    stores.apply(&mut cmd);
    cmd
}

fn assert_clean_failure(status: ExitStatus, stderr: &str, needle: &str) {
    assert!(!status.success(), "berth should fail; stderr: {stderr}");
    assert_eq!(
        status.code(),
        Some(1),
        "exits with a code, not a signal; stderr: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr should mention {needle:?}; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "berth panicked: {stderr}");
}

#[test]
fn version_prints_the_version() {
    let mut cmd = berth_command();
    cmd.arg("--version");
    let (status, stdout, stderr) = run_to_exit(cmd);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), format!("berth {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let stores = Stores::fresh();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve(dir.path(), &stores);
    cmd.arg("--listen").arg(&addr);
    let (status, _, stderr) = run_to_exit(cmd);
    assert_clean_failure(status, &stderr, "cannot listen");
    assert!(stderr.contains(&addr), "the message names the address: {stderr}");
}

#[test]
fn a_data_dir_under_a_regular_file_is_a_clear_error() {
    let stores = Stores::fresh();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let data = file.join("data");
    let mut cmd = serve(&data, &stores);
    cmd.arg("--listen").arg("127.0.0.1:0");
    let (status, _, stderr) = run_to_exit(cmd);
    assert_clean_failure(status, &stderr, "data directory");
    assert!(
        stderr.contains(&*data.to_string_lossy()),
        "the message names the path: {stderr}"
    );
}

#[test]
fn a_data_dir_in_proc_is_a_clear_error() {
    let stores = Stores::fresh();
    let data = std::path::Path::new("/proc/berth-it-cannot-exist/data");
    let mut cmd = serve(data, &stores);
    cmd.arg("--listen").arg("127.0.0.1:0");
    let (status, _, stderr) = run_to_exit(cmd);
    assert_clean_failure(status, &stderr, "data directory");
    assert!(stderr.contains("/proc/berth-it-cannot-exist"), "{stderr}");
}

#[test]
fn a_missing_or_bad_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::fresh();
    let mut cmd = berth_command();
    cmd.arg("serve").arg("--config").arg(dir.path().join("missing.toml"));
    stores.apply(&mut cmd);
    let (status, _, stderr) = run_to_exit(cmd);
    assert_clean_failure(status, &stderr, "missing.toml");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let mut cmd = berth_command();
    cmd.arg("serve").arg("--config").arg(&bad);
    stores.apply(&mut cmd);
    let (status, _, stderr) = run_to_exit(cmd);
    assert_clean_failure(status, &stderr, "lisen");
}

#[tokio::test]
async fn a_config_file_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-config");
    let config = dir.path().join("berth.toml");
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[limits]\nmanifest_max_bytes = 1000\n",
        data.to_string_lossy()
    );
    std::fs::write(&config, toml).unwrap();
    let stores = Stores::fresh();
    let mut cmd = berth_command();
    cmd.arg("serve").arg("--config").arg(&config);
    stores.apply(&mut cmd);
    let server = spawn_server(cmd).unwrap_or_else(|f| panic!("berth did not start: {f:?}"));
    assert!(server.addr.starts_with("127.0.0.1:"), "{}", server.addr);
    assert!(data.is_dir(), "the data dir from the file is made");
    if scaleout() {
        assert!(!data.join("berth.db").exists(), "scale-out keeps no SQLite file");
    } else {
        assert!(data.join("berth.db").exists(), "the data dir from the file is used");
    }

    // The manifest limit from the file applies.
    let http = client();
    let base = server.base();
    let image = Image::random(1);
    image.push(&http, &base, "a", "small").await;
    let mut big: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    big["annotations"] = serde_json::json!({ "pad": "x".repeat(1000) });
    let resp = crate::harness::put_manifest(
        &http,
        &base,
        "a",
        "big",
        OCI_MANIFEST,
        &serde_json::to_vec(&big).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn berth_listen_from_the_environment_is_honoured() {
    let stores = Stores::fresh();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve(dir.path(), &stores);
    cmd.env("BERTH_LISTEN", format!("127.0.0.1:{port}"));
    let server = spawn_server(cmd).unwrap_or_else(|f| panic!("berth did not start: {f:?}"));
    assert_eq!(server.addr, format!("127.0.0.1:{port}"));
    let resp = client().get(format!("{}/v2/", server.base())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn the_listen_flag_beats_the_environment() {
    let stores = Stores::fresh();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve(dir.path(), &stores);
    cmd.env("BERTH_LISTEN", "not an address")
        .arg("--listen")
        .arg("127.0.0.1:0");
    let server = spawn_server(cmd).unwrap_or_else(|f| panic!("berth did not start: {f:?}"));
    let resp = client().get(format!("{}/v2/", server.base())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let stores = Stores::fresh();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve(dir.path(), &stores);
    cmd.arg("--listen").arg("127.0.0.1:0");
    let mut server = spawn_server(cmd).unwrap_or_else(|f| panic!("berth did not start: {f:?}"));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_timeout(&mut server.child, Duration::from_secs(10)).expect("berth stops on SIGTERM");
    assert!(status.success(), "{status}");
    // The stderr reader may lag behind the exit a little.
    let mut log = String::new();
    for _ in 0..100 {
        log = server.log.lock().unwrap().clone();
        if log.contains("stopped") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn foreign_berth_variables_are_ignored_but_misspelt_settings_are_not() {
    let stores = Stores::fresh();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve(dir.path(), &stores);
    cmd.env("BERTH_BIN", "/some/tool/setting")
        .arg("--listen")
        .arg("127.0.0.1:0");
    let server = spawn_server(cmd).unwrap_or_else(|f| panic!("berth did not start: {f:?}"));
    let resp = client().get(format!("{}/v2/", server.base())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(server);

    let mut cmd = serve(dir.path(), &stores);
    cmd.env("BERTH_UPLOADS__STALE_AFTR_SECS", "5")
        .arg("--listen")
        .arg("127.0.0.1:0");
    let (status, _, stderr) = run_to_exit(cmd);
    assert_clean_failure(status, &stderr, "stale_aftr_secs");
}
