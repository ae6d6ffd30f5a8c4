//! `sampler serve`'s HTTP side: `/metrics` (OpenMetrics or the Prometheus text format,
//! by the request's `Accept`), `/healthz`, `/debug/pprof/profile?seconds=N` (a pprof
//! profile of the next N seconds, Go's convention, taken by the sampling loop: one
//! at a time, others get 429 with `Retry-After`) and a short index, on hyper's HTTP/1
//! server.
//!
//! The exposition is encoded once per refresh and shared: a scrape copies a reference
//! to bytes, never reads the maps, so many or slow scrapers cannot slow sampling.
//! Connections are bounded ([`MAX_CONNECTIONS`]; more wait in the kernel's accept
//! queue), a client has [`HEADER_TIMEOUT`] to send its request head and
//! [`CONNECTION_TIMEOUT`] in all, and request bodies are never read.

use std::{
    convert::Infallible,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot},
};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection lives (keep-alive included); scrapers reconnect.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape gets: both encodings of the latest refresh, and the health.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub openmetrics: Bytes,
    pub prometheus: Bytes,
    /// `Err(reason)` when the last refresh failed.
    pub health: Result<(), String>,
    pub updated: Instant,
}

impl Exposition {
    pub fn new(openmetrics: String, health: Result<(), String>) -> Self {
        Self {
            prometheus: Bytes::from(crate::present::export::to_prometheus_text(&openmetrics)),
            openmetrics: Bytes::from(openmetrics),
            health,
            updated: Instant::now(),
        }
    }
}

/// The latest exposition, replaced by the refresh loop.
pub type Shared = Arc<RwLock<Arc<Exposition>>>;

/// The longest profile `/debug/pprof/profile` takes, in seconds.
pub const MAX_PROFILE_SECONDS: u64 = 60;
/// Go's default for `seconds`.
pub const DEFAULT_PROFILE_SECONDS: u64 = 30;
/// How long after its end a profile may take to encode before the request fails.
const PROFILE_SLACK: Duration = Duration::from_secs(30);

/// One profile asked for: the sampling loop takes it and answers on `reply` with the
/// gzipped pprof, or why not.
#[derive(Debug)]
pub struct ProfileRequest {
    pub seconds: Duration,
    pub reply: oneshot::Sender<Result<Bytes, String>>,
}

/// The pprof endpoint's side: where requests go, and when the profile being taken
/// ends (`None`: none is). The sampling loop clears it when it has answered.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub requests: mpsc::Sender<ProfileRequest>,
    pub busy: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Profiles {
    /// The endpoint, and the sampling loop's end of it.
    pub fn new() -> (Self, mpsc::Receiver<ProfileRequest>) {
        let (requests, rx) = mpsc::channel(1);
        (
            Self {
                requests,
                busy: Arc::new(std::sync::Mutex::new(None)),
            },
            rx,
        )
    }

    /// Marks the profile answered: the next request may start one.
    pub fn done(busy: &std::sync::Mutex<Option<Instant>>) {
        match busy.lock() {
            Ok(mut b) => *b = None,
            Err(p) => *p.into_inner() = None,
        }
    }
}

/// `seconds` of a profile request: Go's default when absent, else 1 to
/// [`MAX_PROFILE_SECONDS`].
pub fn profile_seconds(query: Option<&str>) -> Result<u64, String> {
    let Some(v) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("seconds="))
    else {
        return Ok(DEFAULT_PROFILE_SECONDS);
    };
    match v.parse::<u64>() {
        Ok(n) if (1..=MAX_PROFILE_SECONDS).contains(&n) => Ok(n),
        _ => Err(format!(
            "seconds must be a whole number from 1 to {MAX_PROFILE_SECONDS} (got `{v}`)\n"
        )),
    }
}

/// Answers `/debug/pprof/profile`: takes the profile through the sampling loop, or
/// says why not (off, busy, a bad `seconds`).
async fn profile<B>(
    req: &Request<B>,
    profiles: Option<&Profiles>,
    extend: &std::sync::Mutex<Option<Instant>>,
) -> Response<Full<Bytes>> {
    let Some(profiles) = profiles else {
        return text(
            StatusCode::NOT_FOUND,
            "profiles are off; `sampler serve --profiles stacks` (or functions) serves them\n",
        );
    };
    if req.method() != Method::GET {
        return not_allowed("profiles are taken with GET\n", "GET");
    }
    let seconds = match profile_seconds(req.uri().query()) {
        Ok(n) => Duration::from_secs(n),
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let ends = Instant::now() + seconds;
    {
        let mut busy = match profiles.busy.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        if let Some(end) = *busy {
            let wait = end.saturating_duration_since(Instant::now()).as_secs() + 1;
            let mut r = text(
                StatusCode::TOO_MANY_REQUESTS,
                format!("a profile is being taken; one at a time (retry in {wait} s)\n"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(wait));
            return r;
        }
        *busy = Some(ends);
    }
    if let Ok(mut e) = extend.lock() {
        *e = Some(ends + PROFILE_SLACK);
    }
    let (reply, answer) = oneshot::channel();
    if profiles
        .requests
        .try_send(ProfileRequest { seconds, reply })
        .is_err()
    {
        Profiles::done(&profiles.busy);
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sampling loop is not taking profiles\n",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(1u64));
        return r;
    }
    match tokio::time::timeout(seconds + PROFILE_SLACK, answer).await {
        Ok(Ok(Ok(bytes))) => {
            let mut r = Response::new(Full::new(bytes));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                header::CONTENT_DISPOSITION,
                header::HeaderValue::from_static("attachment; filename=\"profile\""),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
            r
        }
        Ok(Ok(Err(why))) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the profile failed: {why}\n"),
        ),
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the profile was not answered in time\n",
        ),
    }
}

/// Serves `listener` until the task is dropped. `stale_after`: how old the last
/// refresh may be before `/healthz` reports a failure.
pub async fn run(
    listener: TcpListener,
    shared: Shared,
    stale_after: Duration,
    profiles: Option<Profiles>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors or a connection reset before accept: keep serving.
            Err(e) => {
                eprintln!("sampler: serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let profiles = profiles.clone();
        tokio::spawn(async move {
            // A connection waiting for a profile lives until it has been answered.
            let extend = Arc::new(std::sync::Mutex::new(None::<Instant>));
            let extend_conn = Arc::clone(&extend);
            let service = service_fn(move |req| {
                let current = shared
                    .read()
                    .map_or_else(|p| Arc::clone(&p.into_inner()), |e| Arc::clone(&e));
                let profiles = profiles.clone();
                let extend = Arc::clone(&extend_conn);
                async move {
                    let r = if req.uri().path() == "/debug/pprof/profile" {
                        profile(&req, profiles.as_ref(), &extend).await
                    } else {
                        respond(&req, &current, stale_after)
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // A client too slow to take its response is cut off with the rest.
            let mut deadline = Instant::now() + CONNECTION_TIMEOUT;
            loop {
                match tokio::time::timeout_at(deadline.into(), conn.as_mut()).await {
                    Ok(_) => break,
                    Err(_) => {
                        let until = extend.lock().ok().and_then(|mut e| e.take());
                        match until {
                            Some(t) if t > Instant::now() => deadline = t,
                            _ => break,
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 405, with the methods that are served.
fn not_allowed(body: &'static str, allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, body);
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

/// The response to one request (pure, for the tests).
pub fn respond<B>(
    req: &Request<B>,
    x: &Exposition,
    stale_after: Duration,
) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return not_allowed("only GET and HEAD are served\n", "GET, HEAD");
    }
    let mut r = match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (body, kind) = if crate::present::export::wants_openmetrics(accept) {
                (x.openmetrics.clone(), OPENMETRICS)
            } else {
                (x.prometheus.clone(), PROMETHEUS)
            };
            let mut r = Response::new(Full::new(body));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
            r
        }
        "/healthz" => match &x.health {
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {why}\n"),
            ),
            Ok(()) if x.updated.elapsed() > stale_after => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "unhealthy: no refresh for {:.0} s\n",
                    x.updated.elapsed().as_secs_f64()
                ),
            ),
            Ok(()) => text(StatusCode::OK, "ok\n"),
        },
        "/" => text(
            StatusCode::OK,
            "sampler exporter: /metrics (OpenMetrics or Prometheus text), /healthz, \
             /debug/pprof/profile?seconds=N (pprof)\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: sampler serves /metrics, /healthz and /debug/pprof/profile\n",
        ),
    };
    if head {
        *r.body_mut() = Full::new(Bytes::new());
    }
    r
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[test]
    fn profile_seconds_are_bounded() {
        assert_eq!(profile_seconds(None), Ok(30));
        assert_eq!(profile_seconds(Some("seconds=5")), Ok(5));
        assert_eq!(profile_seconds(Some("debug=1&seconds=60")), Ok(60));
        for bad in [
            "seconds=0",
            "seconds=61",
            "seconds=-1",
            "seconds=1.5",
            "seconds=",
        ] {
            let e = profile_seconds(Some(bad)).unwrap_err();
            assert!(e.contains("1 to 60"), "{bad}: {e}");
        }
    }

    fn req(method: Method, path: &str, accept: Option<&str>) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(a) = accept {
            b = b.header(header::ACCEPT, a);
        }
        b.body(()).unwrap()
    }

    fn body(r: Response<Full<Bytes>>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    fn exposition() -> Exposition {
        Exposition::new(
            "# HELP sampler_x X.\n# TYPE sampler_x counter\nsampler_x_total 1\n# EOF\n".into(),
            Ok(()),
        )
    }

    #[test]
    fn metrics_in_both_formats() {
        let x = exposition();
        let day = Duration::from_secs(86_400);
        let r = respond(&req(Method::GET, "/metrics", None), &x, day);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROMETHEUS);
        let b = body(r);
        assert!(
            b.contains("# TYPE sampler_x_total counter") && !b.contains("# EOF"),
            "{b}"
        );
        let r = respond(
            &req(
                Method::GET,
                "/metrics",
                Some("application/openmetrics-text; version=1.0.0"),
            ),
            &x,
            day,
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], OPENMETRICS);
        assert!(body(r).ends_with("# EOF\n"));
        let r = respond(&req(Method::HEAD, "/metrics", None), &x, day);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r), "");
    }

    #[test]
    fn health_bad_methods_and_unknown_paths() {
        let day = Duration::from_secs(86_400);
        let x = exposition();
        assert_eq!(
            body(respond(&req(Method::GET, "/healthz", None), &x, day)),
            "ok\n"
        );
        let r = respond(&req(Method::GET, "/healthz", None), &x, Duration::ZERO);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let failed = Exposition::new(String::new(), Err("map read failed".into()));
        let r = respond(&req(Method::GET, "/healthz", None), &failed, day);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).contains("map read failed"));
        let r = respond(&req(Method::POST, "/metrics", None), &x, day);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        for path in ["/nope", "/metrics/", "/../etc/passwd", "/metrics?x=1%00"] {
            let r = respond(&req(Method::GET, path, None), &x, day);
            let want = if path.starts_with("/metrics?") {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            assert_eq!(r.status(), want, "{path}");
        }
    }
}
