//! A fake Hugging Face hub on 127.0.0.1 for the `download` stage tests.
//!
//! It speaks the part of the hub's HTTP API that the `hf-hub` client uses, the way
//! huggingface.co answers it:
//!
//! - `GET /api/datasets/{owner}/{name}/revision/{rev}`: JSON with `sha` and
//!   `siblings: [{rfilename}]` (`rev` is `main` or the commit sha);
//! - `GET|HEAD /datasets/{owner}/{name}/resolve/{rev}/{path}`: a 302 to the "CDN" with
//!   `X-Repo-Commit`, `X-Linked-Etag` (the sha256 of the file, as for LFS files) and
//!   `X-Linked-Size`;
//! - `GET|HEAD /cdn/{sha256}`: the bytes, honouring `Range: bytes=a-b` / `bytes=a-`
//!   with `206` and `Content-Range`, unless the request also accepts gzip (then, as
//!   the hub does, the whole file with `200`: a client that sends both, like `hf-hub`
//!   0.5, fails here as it fails against the real hub).
//!
//! Unknown repositories and files get 404, a missing or wrong token 401 (when one is
//! required). Faults can be injected: statuses served to the next requests, a
//! connection cut halfway through a file's body, a corrupted body. Every request is
//! logged so that tests can count what the client asked for.

#![allow(dead_code)] // each test binary uses a different part of the support code

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One request the fake hub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The request path, query removed.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

impl Logged {
    /// Whether this request asked for file content beyond the 1-byte metadata probe.
    pub fn is_body_download(&self) -> bool {
        self.method == "GET"
            && self.path.starts_with("/cdn/")
            && self.range.as_deref() != Some("bytes=0-0")
    }
}

struct FakeRepo {
    sha: String,
    files: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, FakeRepo>,
    token: Option<String>,
    statuses: VecDeque<u16>,
    cut_once: BTreeSet<String>,
    corrupt_once: BTreeSet<String>,
    log: Vec<Logged>,
}

/// The running fake hub; stops when dropped.
pub struct FakeHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Starts a fake hub on a free port of 127.0.0.1.
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(listener, addr, state, stop))
        };
        FakeHub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The base URL to use as `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) dataset `repo` at commit `sha` holding `files`.
    pub fn add_dataset(&self, repo: &str, sha: &str, files: BTreeMap<String, Vec<u8>>) {
        let repo_data = FakeRepo {
            sha: sha.to_string(),
            files,
        };
        self.state().repos.insert(repo.to_string(), repo_data);
    }

    /// From now on, repository requests without `Authorization: Bearer <token>` get 401.
    pub fn require_token(&self, token: &str) {
        self.state().token = Some(token.to_string());
    }

    /// The next `statuses.len()` requests are answered with these error statuses.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.state().statuses.extend(statuses);
    }

    /// The next body download of `content` is cut off halfway (the connection closes
    /// although `Content-Length` promised more).
    pub fn cut_once(&self, content: &[u8]) {
        self.state().cut_once.insert(sha256_hex(content));
    }

    /// The next body download of `content` has its bytes altered.
    pub fn corrupt_once(&self, content: &[u8]) {
        self.state().corrupt_once.insert(sha256_hex(content));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    /// Forgets the logged requests.
    pub fn clear_requests(&self) {
        self.state().log.clear();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so that the loop sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Lowercase hex sha256 of `data` (the hub's ETag of an LFS file).
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let state = state.clone();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = serve(stream, addr, &state);
        });
    }
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, path) = (
        method.to_string(),
        target.split('?').next().unwrap_or("").to_string(),
    );
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    Ok(Some(Request {
        method,
        path,
        headers,
    }))
}

/// One request per connection (`Connection: close`), which `ureq` handles like any
/// server that does not keep connections alive.
fn serve(mut stream: TcpStream, addr: SocketAddr, state: &Mutex<State>) -> std::io::Result<()> {
    let Some(request) = read_request(&stream)? else {
        return Ok(());
    };
    let response = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.log.push(Logged {
            method: request.method.clone(),
            path: request.path.clone(),
            range: request.headers.get("range").cloned(),
            authorization: request.headers.get("authorization").cloned(),
        });
        route(&mut state, &request, addr)
    };
    let head = request.method == "HEAD";
    response.write(&mut stream, head)?;
    stream.flush()?;
    stream.shutdown(Shutdown::Both)
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close (a dropped connection).
    cut_at: Option<usize>,
}

impl Response {
    fn new(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body,
            cut_at: None,
        }
    }

    fn json(status: u16, value: serde_json::Value) -> Response {
        let mut response = Response::new(status, value.to_string().into_bytes());
        response
            .headers
            .push(("Content-Type", "application/json".to_string()));
        response
    }

    fn error(status: u16, code: &str, message: &str) -> Response {
        let mut response = Response::json(status, serde_json::json!({ "error": message }));
        response.headers.push(("X-Error-Code", code.to_string()));
        response
    }

    fn write(&self, stream: &mut TcpStream, head: bool) -> std::io::Result<()> {
        let mut text = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        stream.write_all(text.as_bytes())?;
        if !head {
            let end = self.cut_at.unwrap_or(self.body.len());
            stream.write_all(&self.body[..end])?;
        }
        Ok(())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn route(state: &mut State, request: &Request, addr: SocketAddr) -> Response {
    if let Some(status) = state.statuses.pop_front() {
        return Response::error(status, "Injected", "injected failure");
    }
    if let Some(sha) = request.path.strip_prefix("/cdn/") {
        // Like the hub's resolve-cache, a range asked for together with gzip is
        // ignored: the whole file comes back with 200 and no Content-Range.
        let gzip = request
            .headers
            .get("accept-encoding")
            .is_some_and(|v| v.contains("gzip"));
        let range = request.headers.get("range").filter(|_| !gzip);
        return cdn(state, sha, range);
    }
    let is_repo_path =
        request.path.starts_with("/api/datasets/") || request.path.starts_with("/datasets/");
    if is_repo_path {
        if let Some(token) = &state.token {
            if request.headers.get("authorization") != Some(&format!("Bearer {token}")) {
                return Response::error(
                    401,
                    "RepoNotFound",
                    "Invalid credentials in Authorization header",
                );
            }
        }
    }
    if let Some(rest) = request.path.strip_prefix("/api/datasets/") {
        return match rest.split_once("/revision/") {
            Some((repo, rev)) => info(state, repo, &decode(rev)),
            None => Response::error(404, "NotFound", "no such endpoint"),
        };
    }
    if let Some(rest) = request.path.strip_prefix("/datasets/") {
        if let Some((repo, tail)) = rest.split_once("/resolve/") {
            if let Some((rev, file)) = tail.split_once('/') {
                return resolve(state, repo, &decode(rev), file, addr);
            }
        }
    }
    Response::error(404, "NotFound", "no such endpoint")
}

fn decode(text: &str) -> String {
    text.replace("%2F", "/").replace("%2f", "/")
}

fn repo_at<'a>(state: &'a State, repo: &str, rev: &str) -> Result<&'a FakeRepo, Response> {
    let Some(data) = state.repos.get(repo) else {
        return Err(Response::error(404, "RepoNotFound", "Repository not found"));
    };
    if rev != "main" && rev != data.sha {
        return Err(Response::error(
            404,
            "RevisionNotFound",
            &format!("Invalid rev id: {rev}"),
        ));
    }
    Ok(data)
}

fn info(state: &State, repo: &str, rev: &str) -> Response {
    let data = match repo_at(state, repo, rev) {
        Ok(data) => data,
        Err(response) => return response,
    };
    let siblings: Vec<serde_json::Value> = data
        .files
        .iter()
        .map(|(name, bytes)| {
            // As the hub answers `?blobs=true` for LFS files (the client always asks).
            let size = bytes.len();
            serde_json::json!({
                "rfilename": name,
                "size": size,
                "lfs": { "sha256": sha256_hex(bytes), "size": size, "pointerSize": 134 },
            })
        })
        .collect();
    Response::json(
        200,
        serde_json::json!({ "id": repo, "sha": data.sha, "private": false, "siblings": siblings }),
    )
}

fn resolve(state: &State, repo: &str, rev: &str, file: &str, addr: SocketAddr) -> Response {
    let data = match repo_at(state, repo, rev) {
        Ok(data) => data,
        Err(response) => return response,
    };
    let Some(content) = data.files.get(file) else {
        return Response::error(404, "EntryNotFound", &format!("{file} does not exist"));
    };
    let digest = sha256_hex(content);
    let mut response = Response::new(302, Vec::new());
    response.headers = vec![
        ("Location", format!("http://{addr}/cdn/{digest}")),
        ("X-Repo-Commit", data.sha.clone()),
        ("X-Linked-Etag", format!("\"{digest}\"")),
        ("X-Linked-Size", content.len().to_string()),
        (
            "ETag",
            "\"0123456789abcdef0123456789abcdef01234567\"".to_string(),
        ),
    ];
    response
}

fn cdn(state: &mut State, digest: &str, range: Option<&String>) -> Response {
    let content = state
        .repos
        .values()
        .flat_map(|r| r.files.values())
        .find(|c| sha256_hex(c) == digest)
        .cloned();
    let Some(content) = content else {
        return Response::error(404, "NoSuchKey", "no such blob");
    };
    let size = content.len();
    let (start, end) = match range.map(|r| parse_range(r, size)) {
        None => (0, size),
        Some(Some(bounds)) => bounds,
        Some(None) => {
            let mut response = Response::new(416, Vec::new());
            response
                .headers
                .push(("Content-Range", format!("bytes */{size}")));
            return response;
        }
    };
    let mut body = content[start..end].to_vec();
    let mut cut_at = None;
    if body.len() > 1 {
        if state.cut_once.remove(digest) {
            cut_at = Some(body.len() / 2);
        } else if state.corrupt_once.remove(digest) {
            body.iter_mut().step_by(7).for_each(|b| *b ^= 0x5a);
        }
    }
    let status = if range.is_some() { 206 } else { 200 };
    let mut response = Response::new(status, body);
    response.cut_at = cut_at;
    response.headers.push(("ETag", format!("\"{digest}\"")));
    if range.is_some() {
        response
            .headers
            .push(("Content-Range", format!("bytes {start}-{}/{size}", end - 1)));
    }
    response
}

/// `bytes=a-b` or `bytes=a-` as a half-open byte range within `size`, `None` if
/// unsatisfiable.
fn parse_range(header: &str, size: usize) -> Option<(usize, usize)> {
    let spec = header.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        size
    } else {
        (b.trim().parse::<usize>().ok()? + 1).min(size)
    };
    (start < end).then_some((start, end))
}
