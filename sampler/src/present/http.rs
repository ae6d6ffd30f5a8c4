//! `sampler serve`'s HTTP side: `/metrics` (OpenMetrics or the Prometheus text format,
//! by the request's `Accept`), `/healthz` and a short index, on hyper's HTTP/1 server.
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
use tokio::{net::TcpListener, sync::Semaphore};

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

/// Serves `listener` until the task is dropped. `stale_after`: how old the last
/// refresh may be before `/healthz` reports a failure.
pub async fn run(listener: TcpListener, shared: Shared, stale_after: Duration) {
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
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let current = shared
                    .read()
                    .map_or_else(|p| Arc::clone(&p.into_inner()), |e| Arc::clone(&e));
                async move { Ok::<_, Infallible>(respond(&req, &current, stale_after)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            // A client too slow to take its response is cut off with the rest.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
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

/// The response to one request (pure, for the tests).
pub fn respond<B>(
    req: &Request<B>,
    x: &Exposition,
    stale_after: Duration,
) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
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
            "sampler exporter: /metrics (OpenMetrics or Prometheus text), /healthz\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: sampler serves /metrics and /healthz\n",
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
