//! The origin matcher: runs on every request of a CORS route.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use spillway_ingest::cors::OriginMatcher;

fn matcher(c: &mut Criterion) {
    let m = OriginMatcher::compile(&["https://*.test.com", "https://*.other.test", "https://test.com"])
        .expect("valid patterns");
    let mut many: Vec<String> = (0..50).map(|i| format!("https://app{i}.example.org")).collect();
    many.push("https://*.test.com".into());
    let m50 = OriginMatcher::compile(&many).expect("valid patterns");
    let mut g = c.benchmark_group("origin_match");
    for (name, origin) in [
        ("exact", "https://test.com"),
        ("wildcard", "https://a.b.test.com"),
        ("refused", "https://test.com.evil.com"),
        ("malformed", "not an origin"),
    ] {
        g.bench_function(name, |b| b.iter(|| m.matches(black_box(origin.as_bytes()))));
    }
    g.bench_function("wildcard_last_of_51", |b| b.iter(|| m50.matches(black_box(b"https://a.test.com"))));
    g.finish();
}

criterion_group!(benches, matcher);
criterion_main!(benches);
