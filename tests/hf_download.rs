//! The Hugging Face download path, for real: `kokichi run --model test-org/moshiko-mini` against a
//! hub served on loopback (`HF_ENDPOINT`) with a throwaway `HF_HOME`. The server answers the
//! routes hf-hub calls as the hub does: `/{repo}/resolve/main/{file}` with range requests, large
//! files redirected to a CDN path with `x-linked-etag`, `x-repo-commit` on every answer, 401
//! `RepoNotFound` for a repo it does not have and 404 `EntryNotFound` for a missing file, and the
//! `/api/models/{repo}` metadata. It can drop the connection halfway through a file. The repo is
//! moshiko's snapshot layout (`model.safetensors`, `tokenizer-e351c8d8-checkpoint125.safetensors`,
//! `tokenizer_spm_32k_3.model`) with a Kyutai `config.json` for a small LM with random weights;
//! Mimi is full size with Kyutai's tensor names (sparse zeros).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::prelude::Device;
use common::{fixture, scratch};
use kokichi::lm::{LmConfig, LmModel};

const REPO: &str = "test-org/moshiko-mini";
const NO_MIMI: &str = "test-org/no-mimi";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const LM: &str = "model.safetensors";
const MIMI: &str = "tokenizer-e351c8d8-checkpoint125.safetensors";
const TOKENIZER: &str = "tokenizer_spm_32k_3.model";

/// A repo's files: name -> file on disk.
type Files = HashMap<String, PathBuf>;

/// What the server was asked: (method, path, range header).
type Log = Arc<Mutex<Vec<(String, String, String)>>>;

/// A hub on loopback; dropping it stops it (the port then refuses connections).
struct Hub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Log,
    /// Drop the connection after this many bytes of this file (once).
    cut: Arc<Mutex<Option<(String, u64)>>>,
    /// Answer a range request that does not start at 0 with the whole file (as some proxies do).
    ignore_range: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    repos: HashMap<String, Files>,
    addr: SocketAddr,
    log: Log,
    cut: Arc<Mutex<Option<(String, u64)>>>,
    ignore_range: Arc<AtomicBool>,
}

impl Hub {
    fn start(repos: HashMap<String, Files>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::default();
        let cut = Arc::new(Mutex::new(None));
        let ignore_range = Arc::new(AtomicBool::new(false));
        let shared =
            Arc::new(Shared { repos, addr, log: log.clone(), cut: cut.clone(), ignore_range: ignore_range.clone() });
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(&shared, conn);
                });
            }
        });
        Hub { addr, stop, log, cut, ignore_range, thread: Some(thread) }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<(String, String, String)> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A stable stand-in for the hub's etags (git sha1 or LFS sha256): any unique string will do.
fn etag(repo: &str, file: &str, size: u64) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in repo.bytes().chain(file.bytes()).chain(size.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}").repeat(4)
}

fn head(stream: &mut TcpStream, status: &str, headers: &[(&str, String)]) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())
}

fn error(stream: &mut TcpStream, status: &str, code: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{{\"error\":\"{message}\"}}");
    head(
        stream,
        status,
        &[
            ("X-Error-Code", code.into()),
            ("X-Error-Message", message.into()),
            ("Content-Type", "application/json".into()),
            ("Content-Length", body.len().to_string()),
        ],
    )?;
    stream.write_all(body.as_bytes())
}

fn serve(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let mut range = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = v.trim().to_string();
        }
    }
    shared.log.lock().unwrap().push((method.clone(), path.clone(), range.clone()));
    let body = method != "HEAD";
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let repo_of = |owner: &str, name: &str| shared.repos.get(&format!("{owner}/{name}"));
    match segs.as_slice() {
        // Repo metadata (`ApiRepo::info`): id, commit and file list.
        ["api", "models", owner, name, rest @ ..] if rest.is_empty() || rest.first() == Some(&"revision") => {
            let Some(files) = repo_of(owner, name) else {
                return error(&mut stream, "401 Unauthorized", "RepoNotFound", "Repository not found");
            };
            let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
            let json = serde_json::json!({ "id": format!("{owner}/{name}"), "sha": COMMIT, "siblings": siblings });
            let text = json.to_string();
            head(
                &mut stream,
                "200 OK",
                &[("Content-Type", "application/json".into()), ("Content-Length", text.len().to_string())],
            )?;
            stream.write_all(text.as_bytes())
        }
        [owner, name, "resolve", rev, file] => {
            let repo = format!("{owner}/{name}");
            let Some(files) = repo_of(owner, name) else {
                return error(&mut stream, "401 Unauthorized", "RepoNotFound", "Repository not found");
            };
            if *rev != "main" && *rev != COMMIT {
                return error(&mut stream, "404 Not Found", "RevisionNotFound", "Revision not found");
            }
            let Some(src) = files.get(*file) else {
                return error(&mut stream, "404 Not Found", "EntryNotFound", "Entry not found");
            };
            let size = std::fs::metadata(src)?.len();
            let tag = etag(&repo, file, size);
            if file.ends_with(".safetensors") {
                // An LFS file: the hub redirects to its CDN (another host in real life).
                let location = format!("http://{}/cdn/{repo}/{file}", shared.addr);
                return head(
                    &mut stream,
                    "302 Found",
                    &[
                        ("Location", location),
                        ("X-Repo-Commit", COMMIT.into()),
                        ("X-Linked-Etag", format!("\"{tag}\"")),
                        ("X-Linked-Size", size.to_string()),
                        ("ETag", "\"a-git-blob-sha1\"".into()),
                        ("Content-Length", "0".into()),
                    ],
                );
            }
            content(
                shared,
                &mut stream,
                file,
                src,
                &range,
                &[("X-Repo-Commit", COMMIT.into()), ("ETag", format!("\"{tag}\""))],
                body,
            )
        }
        ["cdn", owner, name, file] => match repo_of(owner, name).and_then(|f| f.get(*file)) {
            Some(src) => content(shared, &mut stream, file, src, &range, &[], body),
            None => error(&mut stream, "404 Not Found", "EntryNotFound", "Entry not found"),
        },
        _ => error(&mut stream, "404 Not Found", "NotFound", "Not found"),
    }
}

/// A file's bytes, all or the requested range, unless a cut is set for it.
fn content(
    shared: &Shared,
    stream: &mut TcpStream,
    file: &str,
    src: &Path,
    range: &str,
    extra: &[(&str, String)],
    body: bool,
) -> std::io::Result<()> {
    let size = std::fs::metadata(src)?.len();
    let range = if shared.ignore_range.load(Ordering::SeqCst) && !range.starts_with("bytes=0-") { "" } else { range };
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let a: u64 = a.parse().unwrap_or(0);
            let b: u64 = if b.is_empty() { size - 1 } else { b.parse::<u64>().unwrap_or(size - 1).min(size - 1) };
            (a, b)
        }
        None => (0, size - 1),
    };
    let mut headers: Vec<(&str, String)> = extra.to_vec();
    headers.push(("Content-Length", (end + 1 - start).to_string()));
    headers.push(("Accept-Ranges", "bytes".into()));
    let status = if range.is_empty() {
        "200 OK"
    } else {
        headers.push(("Content-Range", format!("bytes {start}-{end}/{size}")));
        "206 Partial Content"
    };
    head(stream, status, &headers)?;
    if !body {
        return Ok(());
    }
    let mut stop_at = end + 1;
    {
        let mut cut = shared.cut.lock().unwrap();
        if let Some((f, at)) = cut.as_ref()
            && f == file
            && start < *at
            && end >= *at
        {
            stop_at = *at;
            *cut = None;
        }
    }
    let mut f = std::fs::File::open(src)?;
    f.seek(std::io::SeekFrom::Start(start))?;
    std::io::copy(&mut f.take(stop_at - start), stream)?;
    stream.flush()?;
    if stop_at <= end {
        // The connection drops halfway through the file.
        stream.shutdown(Shutdown::Both)?;
    }
    Ok(())
}

/// Writes a bf16 safetensors file of zeros with these tensors, sparse on disk.
fn sparse_bf16(path: &Path, layout: &str) {
    let text = std::fs::read_to_string(fixture("reference").join(layout)).unwrap();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for l in text.lines() {
        let mut parts = l.split('\t');
        let name = parts.next().unwrap();
        let shape: Vec<usize> = parts
            .next()
            .unwrap()
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.into(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    f.set_len((8 + h.len() + offset) as u64).unwrap();
}

/// The two repos: moshiko's layout with a small LM, and the same without its Mimi file.
fn repos() -> HashMap<String, Files> {
    let dir = scratch("hf-download", "repo");
    std::fs::create_dir_all(&dir).unwrap();
    // A small LM in the moshiko layout with random weights, its vocabulary Mimi's 2048 bins.
    let text = std::fs::read_to_string(fixture("lm_real").join("config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg = LmConfig { card: 2048, ..LmConfig::from_json(&json["lm"].to_string()).unwrap() };
    let (lm, slots) = LmModel::random(cfg.clone(), &Device::flex(), 54).unwrap();
    kokichi::weights::export(&lm, &slots, &dir.join(LM), false).unwrap();
    // A Kyutai config.json: the LM's keyword arguments at the top level plus the file names.
    let mut config = serde_json::to_value(&cfg).unwrap().as_object().unwrap().clone();
    config.insert("moshi_name".into(), LM.into());
    config.insert("mimi_name".into(), MIMI.into());
    config.insert("tokenizer_name".into(), TOKENIZER.into());
    std::fs::write(dir.join("config.json"), serde_json::Value::Object(config).to_string()).unwrap();
    sparse_bf16(&dir.join(MIMI), "layout_mimi.txt");
    std::fs::copy(fixture("spm").join("tiny.model"), dir.join(TOKENIZER)).unwrap();
    let full: Files = ["config.json", LM, MIMI, TOKENIZER].iter().map(|f| (f.to_string(), dir.join(f))).collect();
    let mut no_mimi = full.clone();
    no_mimi.remove(MIMI);
    HashMap::from([(REPO.to_string(), full), (NO_MIMI.to_string(), no_mimi)])
}

struct Outcome {
    ok: bool,
    stderr: String,
}

/// `kokichi run --model <model>` with this hub endpoint and HF_HOME, stderr a pipe (not a terminal).
fn run(model: &str, endpoint: &str, hf_home: &Path, output: &Path) -> Outcome {
    let input = scratch("hf-download", "in.wav");
    if !input.exists() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 24000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&input, spec).unwrap();
        for i in 0..24000 * 3 / 10 {
            w.write_sample((3000.0 * (i as f32 * 0.05).sin()) as i16).unwrap();
        }
        w.finalize().unwrap();
    }
    let child = Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["--backend", "cpu", "run", "--greedy", "--model", model, "--input"])
        .arg(&input)
        .arg("--output")
        .arg(output)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .env("RUST_LOG", "info")
        .env_remove("HF_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kokichi");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(out) => out.expect("kokichi ran"),
        Err(_) => {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("kokichi run --model {model} did not finish in 300 s");
        }
    };
    Outcome { ok: out.status.success(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// The same run on a terminal: a pty from Python's `pty` module (no shell); stdout and stderr
/// come back together.
fn run_on_terminal(model: &str, endpoint: &str, hf_home: &Path, output: &Path) -> Outcome {
    let input = scratch("hf-download", "in.wav");
    let out = Command::new("python3")
        .args(["-c", "import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)", env!("CARGO_BIN_EXE_kokichi")])
        .args(["--backend", "cpu", "run", "--greedy", "--model", model, "--input"])
        .arg(&input)
        .arg("--output")
        .arg(output)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs kokichi on a pty");
    Outcome { ok: out.status.success(), stderr: String::from_utf8_lossy(&out.stdout).into_owned() }
}

/// The single `error:` line of a failed run.
fn error_line(o: &Outcome) -> String {
    assert!(!o.ok, "the run should have failed:\n{}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{}", o.stderr);
    eprintln!("{}", lines[0]);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    lines[0].to_string()
}

/// The files a run logged as downloaded, one line each.
fn downloaded(o: &Outcome) -> Vec<String> {
    o.stderr
        .lines()
        .filter_map(|l| l.split(&format!("downloaded {REPO}/")).nth(1))
        .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn samples(wav: &Path) -> usize {
    hound::WavReader::open(wav).unwrap().len() as usize
}

#[test]
fn download_cache_offline_resume_and_errors() {
    let repos = repos();
    let sources = repos[REPO].clone();
    let hf_home = scratch("hf-download", "hf-home");
    let _ = std::fs::remove_dir_all(&hf_home);
    let cache = hf_home.join("hub").join("models--test-org--moshiko-mini");
    let lm_size = std::fs::metadata(&sources[LM]).unwrap().len();

    // 1. The connection drops halfway through the LM's weights: one clear error line.
    let hub = Hub::start(repos.clone());
    let half = lm_size / 2;
    *hub.cut.lock().unwrap() = Some((LM.to_string(), half));
    let out1 = scratch("hf-download", "out1.wav");
    let first = run(REPO, &hub.endpoint(), &hf_home, &out1);
    let line = error_line(&first);
    assert!(
        line.contains(REPO)
            && line.contains(LM)
            && line.contains("interrupted")
            && line.contains(&format!("after {half} of {lm_size} bytes"))
            && line.contains("run again"),
        "{line}"
    );
    assert_eq!(downloaded(&first), ["config.json"], "{}", first.stderr);
    let parts: Vec<u64> = std::fs::read_dir(cache.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(parts, [half], "the partial blob keeps what arrived");

    // 2. The next run resumes that file with a range request and completes the snapshot.
    let out2 = scratch("hf-download", "out2.wav");
    let second = run(REPO, &hub.endpoint(), &hf_home, &out2);
    assert!(second.ok, "{}", second.stderr);
    assert_eq!(downloaded(&second), [LM, MIMI, TOKENIZER], "one line per file:\n{}", second.stderr);
    assert!(second.stderr.contains(&format!("downloaded {REPO}/{LM} (")) && second.stderr.contains("resumed at"));
    assert!(!second.stderr.contains('\r'), "no progress bar off a terminal");
    let resumed = hub
        .requests()
        .iter()
        .any(|(m, p, r)| m == "GET" && p == &format!("/cdn/{REPO}/{LM}") && r == &format!("bytes={half}-"));
    assert!(resumed, "no resuming range request: {:?}", hub.requests());
    assert!(samples(&out2) > 0);

    // The standard cache layout: refs/main names the commit, the snapshot links into blobs/.
    assert_eq!(std::fs::read_to_string(cache.join("refs").join("main")).unwrap(), COMMIT);
    let snapshot = cache.join("snapshots").join(COMMIT);
    for (name, src) in &sources {
        let link = snapshot.join(name);
        let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        assert!(target.starts_with("../../blobs"), "{name} -> {}", target.display());
        assert!(same_bytes(&link, src), "{name}: the cached bytes differ from the served ones");
    }
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // 3. Server stopped: the model loads from the cache, offline.
    let endpoint = hub.endpoint();
    drop(hub);
    assert!(TcpStream::connect(endpoint.trim_start_matches("http://")).is_err(), "the hub is down");
    let out3 = scratch("hf-download", "out3.wav");
    let third = run(REPO, &endpoint, &hf_home, &out3);
    assert!(third.ok, "{}", third.stderr);
    assert!(downloaded(&third).is_empty(), "{}", third.stderr);
    assert_eq!(samples(&out3), samples(&out2));

    // 4. One clear line for: a repo the hub does not have, a file missing from a repo, no hub.
    let other_home = scratch("hf-download", "hf-home-errors");
    let out = scratch("hf-download", "never.wav");
    let unreachable = error_line(&run("test-org/nowhere", &endpoint, &other_home, &out));
    assert!(
        unreachable.contains("test-org/nowhere")
            && unreachable.contains(&format!("cannot reach {endpoint}: "))
            && unreachable.contains("Connection refused"),
        "{unreachable}"
    );
    let hub = Hub::start(repos);
    let missing_repo = error_line(&run("test-org/no-such-repo", &hub.endpoint(), &other_home, &out));
    assert!(
        missing_repo.contains("test-org/no-such-repo") && missing_repo.contains("no such repository"),
        "{missing_repo}"
    );
    let missing_file = error_line(&run(NO_MIMI, &hub.endpoint(), &other_home, &out));
    assert!(
        missing_file.contains(NO_MIMI) && missing_file.contains(&format!("{MIMI}: no such file")),
        "{missing_file}"
    );
    assert!(!out.exists());

    // 5. A resume whose range request is ignored: the oversized file is refused, the next run
    // downloads it whole.
    let norange_home = scratch("hf-download", "hf-home-norange");
    *hub.cut.lock().unwrap() = Some((LM.to_string(), half));
    assert!(error_line(&run(REPO, &hub.endpoint(), &norange_home, &out)).contains("interrupted"));
    hub.ignore_range.store(true, Ordering::SeqCst);
    let oversized = error_line(&run(REPO, &hub.endpoint(), &norange_home, &out));
    assert!(
        oversized.contains(&format!("{LM}: received {} bytes where the hub announced {lm_size}", half + lm_size)),
        "{oversized}"
    );
    hub.ignore_range.store(false, Ordering::SeqCst);
    let whole = run(REPO, &hub.endpoint(), &norange_home, &scratch("hf-download", "whole.wav"));
    assert!(whole.ok, "{}", whole.stderr);
    let lm_link = norange_home.join("hub/models--test-org--moshiko-mini/snapshots").join(COMMIT).join(LM);
    assert!(same_bytes(&lm_link, &sources[LM]));

    // 6. On a terminal: indicatif's bar for each file, no per-file log lines.
    let tty_home = scratch("hf-download", "hf-home-tty");
    let tty = run_on_terminal(REPO, &hub.endpoint(), &tty_home, &scratch("hf-download", "tty.wav"));
    assert!(tty.ok, "{}", tty.stderr);
    assert!(downloaded(&tty).is_empty(), "{}", tty.stderr);
    for f in ["config.json", LM, TOKENIZER] {
        let bar = tty.stderr.lines().any(|l| l.contains(f) && l.contains("[00:00:0") && l.contains("B/"));
        assert!(bar, "no progress bar for {f}:\n{}", tty.stderr);
    }
    drop(hub);
    // This run's scratch folder: the repo, the caches (hundreds of MB) and the outputs.
    let _ = std::fs::remove_dir_all(hf_home.parent().unwrap());
}
