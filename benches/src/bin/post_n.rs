//! Posts exactly N requests with C clients, each sending its next request as
//! soon as its last was answered (closed loop), and prints one line:
//! `sent accepted non_2xx errors seconds`. For counting what a fixed number
//! of accepted requests cost (benches/sqs.sh), not for latency: the load
//! harness (issue 17) is the tool for that.
//!
//!     post_n URL N C [BODY_BYTES]
//!
//! With `ORIGIN` set, every request carries that `Origin` header, as a
//! browser's would (benches/callgrind.sh measures a CORS route with it).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, n, c, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: post_n URL N C [BODY_BYTES]");
    };
    let n: u64 = n.parse()?;
    let c: u64 = c.parse()?;
    let body_bytes: usize = rest.first().map(|b| b.parse()).transpose()?.unwrap_or(200);
    let pad = "x".repeat(body_bytes.saturating_sub(40));
    let body = format!(r#"{{"event":"page_view","user":42,"pad":"{pad}"}}"#);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(origin) = std::env::var("ORIGIN") {
        headers.insert(reqwest::header::ORIGIN, origin.parse()?);
    }
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).default_headers(headers).build()?;
    let next = Arc::new(AtomicU64::new(0));
    let (accepted, non_2xx, errors) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..c {
        let (http, url, body, next) = (http.clone(), url.clone(), body.clone(), next.clone());
        let (accepted, non_2xx, errors) = (accepted.clone(), non_2xx.clone(), errors.clone());
        clients.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => accepted.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => non_2xx.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for client in clients {
        client.await?;
    }
    println!(
        "{n} {} {} {} {:.3}",
        accepted.load(Ordering::Relaxed),
        non_2xx.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
