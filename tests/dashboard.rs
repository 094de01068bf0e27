//! End to end: the admin dashboard in a real headless Chromium, against a real Fulcrum in front
//! of three demo backends.
//!
//! `tests/dashboard/check.mjs` (playwright-core driving Debian's `/usr/bin/chromium`) opens the
//! dashboard, waits for the three backends, sends 50 requests through the proxy, waits until the
//! total-requests tile counts them, and takes a full-page screenshot into cargo's scratch
//! directory (`target/tmp/dashboard.png`). With `FULCRUM_UPDATE_SCREENSHOT=1` a passing run also
//! copies it to `docs/dashboard.png`, the README's picture (so a plain `cargo test` never
//! changes a tracked file).
//!
//! Needs `node`, `/usr/bin/chromium` (or `$CHROMIUM`) and `npm ci` in `tests/dashboard`. Without
//! them the test is skipped with a notice `cargo test` shows, unless `CI` is set, where it fails
//! (`.ci/run` installs them; see `common::tools_present`).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fulcrum::Strategy;

/// Longest the node script may run (it bounds itself at 90 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What is missing to run the browser test, if anything.
fn missing_prerequisites(dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    missing.extend(common::missing_program(
        "node",
        "apt-get install nodejs npm",
    ));
    let chromium = chromium();
    if !chromium.is_file() {
        missing.push(format!("{} (apt-get install chromium)", chromium.display()));
    }
    if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push(format!(
            "{}/node_modules (cd tests/dashboard && npm ci)",
            dir.display()
        ));
    }
    missing
}

/// Runs `cmd` until it exits or `timeout` passes (then kills it); returns its exit success and
/// its stdout and stderr.
fn run_bounded(mut cmd: Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start node");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, mut stderr) = (
        out_reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default(),
    );
    if status.is_none() {
        stderr.push_str(&format!("\nkilled after {} s", timeout.as_secs()));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

#[test]
fn dashboard_shows_live_traffic_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/dashboard");
    if !common::tools_present(missing_prerequisites(&dir)) {
        return;
    }

    let b = common::backends(&[("web1", 10), ("web2", 50), ("web3", 100)]);
    let lb = common::start(common::config(
        Strategy::WeightedRoundRobin,
        &[(&b[0], 3), (&b[1], 2), (&b[2], 1)],
    ));
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);

    let mut cmd = Command::new("node");
    cmd.arg(dir.join("check.mjs"))
        .arg(format!("http://{}", lb.admin_addr()))
        .arg(format!("http://{}", lb.listen_addr()))
        .arg(&shot)
        .arg("web1,web2,web3")
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("CHROMIUM", chromium())
        .current_dir(&dir);
    let (ok, stdout, stderr) = run_bounded(cmd, SCRIPT_TIMEOUT);
    lb.stop();
    assert!(
        ok,
        "the dashboard check failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    let size = std::fs::metadata(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{stdout}", shot.display()))
        .len();
    assert!(
        size > 10 * 1024,
        "screenshot {} is only {size} bytes",
        shot.display()
    );
    let mut magic = [0u8; 8];
    std::fs::File::open(&shot)
        .and_then(|mut f| f.read_exact(&mut magic))
        .expect("read the screenshot");
    assert_eq!(&magic, b"\x89PNG\r\n\x1a\n", "screenshot is not a PNG");

    println!("dashboard screenshot: {}", shot.display());
    if std::env::var_os("FULCRUM_UPDATE_SCREENSHOT").is_some() {
        let docs = root.join("docs/dashboard.png");
        std::fs::create_dir_all(docs.parent().unwrap()).expect("docs/");
        std::fs::copy(&shot, &docs).expect("copy the screenshot to docs/");
    }
}
