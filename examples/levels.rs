//! Compression level measurements for `docs/compression-levels.md`.
//!
//! `cargo run --release --example levels -- [label=path[,path...]]...`
//!
//! Always measures two synthetic corpora built here (a ~1 MiB JavaScript-like
//! bundle and a ~100 KiB HTML page); each argument adds a corpus made of the
//! concatenated files. Times are the best of several runs (the machine is
//! shared), one-shot via `encode` and streaming via `compress_body` fed 16 KiB
//! frames.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use strata::compression::{compress_body, decode, encode, Coding};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "user", "item", "list", "node", "value", "result", "config", "state", "event", "handler",
    "request", "response", "cache", "entry", "index", "count", "buffer", "render", "update",
    "element", "props", "context", "options", "callback", "promise", "error", "data", "key",
    "target", "source", "parent", "child", "style", "layout", "width", "height", "offset",
];

fn ident(rng: &mut Rng) -> String {
    let a = rng.pick(WORDS);
    let b = rng.pick(WORDS);
    let mut s = String::from(a);
    s.push_str(&b[..1].to_uppercase());
    s.push_str(&b[1..]);
    if rng.below(4) == 0 {
        s.push_str(&rng.below(100).to_string());
    }
    s
}

/// A JavaScript-bundle-like text: modules of functions with varied
/// identifiers, literals and control flow.
fn synthetic_js(target: usize) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = String::with_capacity(target + 4096);
    let mut module = 0;
    while out.len() < target {
        module += 1;
        out.push_str(&format!("/***/ \"./src/{}/{}.js\":\n/***/ (function(module, exports, __webpack_require__) {{\n\"use strict\";\n", ident(&mut rng), ident(&mut rng)));
        for _ in 0..(3 + rng.below(6)) {
            let f = ident(&mut rng);
            let (a, b) = (ident(&mut rng), ident(&mut rng));
            out.push_str(&format!("function {f}({a}, {b}) {{\n"));
            for _ in 0..(2 + rng.below(8)) {
                let v = ident(&mut rng);
                match rng.below(6) {
                    0 => out.push_str(&format!("  const {v} = {a}.{}({b}, {});\n", ident(&mut rng), rng.below(1000))),
                    1 => out.push_str(&format!("  if ({a} && {a}.{} > {}) {{\n    return {b}.{}(\"{} {}\");\n  }}\n", ident(&mut rng), rng.below(64), ident(&mut rng), rng.pick(WORDS), rng.pick(WORDS))),
                    2 => out.push_str(&format!("  for (let i = 0; i < {b}.length; i++) {{\n    {v}[i] = {a}[i] * {} + {};\n  }}\n", rng.below(16), rng.below(256))),
                    3 => out.push_str(&format!("  this.{v} = Object.assign({{}}, {a}, {{ {}: {}, {}: \"{}\" }});\n", ident(&mut rng), rng.below(10_000), ident(&mut rng), ident(&mut rng))),
                    4 => out.push_str(&format!("  {v} = await fetch(`/api/v{}/{}/${{{a}.id}}`).then((r) => r.json());\n", rng.below(3) + 1, rng.pick(WORDS))),
                    _ => out.push_str(&format!("  throw new Error(\"{} failed: \" + {b} + \" (code {})\");\n", ident(&mut rng), rng.below(600))),
                }
            }
            out.push_str(&format!("  return {a};\n}}\nexports.{f} = {f};\n"));
        }
        out.push_str(&format!("/***/ }}), // module {module}\n\n"));
    }
    out.truncate(target);
    out.into_bytes()
}

/// An HTML page of navigation, tables and paragraphs with varied text.
fn synthetic_html(target: usize) -> Vec<u8> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Catalogue</title><link rel=\"stylesheet\" href=\"/static/site.css\"></head>\n<body>\n<nav class=\"top\"><ul>");
    for _ in 0..12 {
        let w = rng.pick(WORDS);
        out.push_str(&format!("<li><a href=\"/{w}\">{w}</a></li>"));
    }
    out.push_str("</ul></nav>\n<main>\n");
    while out.len() < target {
        out.push_str(&format!(
            "<section id=\"{}\"><h2>{} {}</h2>\n<p>",
            ident(&mut rng),
            rng.pick(WORDS),
            rng.pick(WORDS)
        ));
        for _ in 0..(20 + rng.below(40)) {
            out.push_str(rng.pick(WORDS));
            out.push(if rng.below(9) == 0 { '.' } else { ' ' });
        }
        out.push_str("</p>\n<table class=\"data\"><tbody>\n");
        for _ in 0..(3 + rng.below(8)) {
            out.push_str(&format!("<tr><td class=\"name\"><a href=\"/item/{}\">{}</a></td><td class=\"num\">{}.{:02}</td><td>{}</td></tr>\n", rng.below(100_000), ident(&mut rng), rng.below(1000), rng.below(100), rng.pick(WORDS)));
        }
        out.push_str("</tbody></table></section>\n");
    }
    out.truncate(target);
    out.into_bytes()
}

fn best_time(mut run: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    let start = Instant::now();
    let mut runs = 0;
    while runs < 2 || (start.elapsed() < Duration::from_millis(800) && runs < 20) {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn mib_s(len: usize, d: Duration) -> f64 {
    len as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn stream_encode(
    rt: &tokio::runtime::Runtime,
    coding: Coding,
    level: u32,
    input: &[Bytes],
) -> Bytes {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
        input.iter().cloned().map(|b| Ok(Frame::data(b))).collect();
    let body = compress_body(
        coding,
        level,
        StreamBody::new(futures_util::stream::iter(frames)),
    );
    rt.block_on(body.collect())
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

fn table(name: &str, input: &[u8], rt: &tokio::runtime::Runtime) {
    println!("\n### {name} ({:.1} KiB)\n", input.len() as f64 / 1024.0);
    println!("| coding | level | one-shot ratio | one-shot MiB/s | ms per MiB | stream ratio | stream MiB/s |");
    println!("|---|---|---|---|---|---|---|");
    let chunks: Vec<Bytes> = input
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let runs: [(Coding, &[u32]); 2] = [
        (Coding::Br, &[1, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
        (Coding::Gzip, &[1, 3, 4, 5, 6, 9]),
    ];
    for (coding, levels) in runs {
        for &level in levels {
            let out = encode(coding, level, input).expect("encode");
            assert_eq!(decode(coding, &out).expect("decode"), input);
            let t = best_time(|| {
                encode(coding, level, input).expect("encode");
            });
            let stream = if level <= 6 {
                let out = stream_encode(rt, coding, level, &chunks);
                assert_eq!(decode(coding, &out).expect("decode"), input);
                let ts = best_time(|| {
                    stream_encode(rt, coding, level, &chunks);
                });
                format!(
                    "{:.2} | {:.0}",
                    input.len() as f64 / out.len() as f64,
                    mib_s(input.len(), ts)
                )
            } else {
                "- | -".to_owned()
            };
            println!(
                "| {coding} | {level} | {:.2} | {:.1} | {:.0} | {stream} |",
                input.len() as f64 / out.len() as f64,
                mib_s(input.len(), t),
                t.as_secs_f64() * 1000.0 * 1024.0 * 1024.0 / input.len() as f64,
            );
        }
    }
}

/// Counts live heap bytes, to measure what a streaming encoder holds.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap held by one live streaming encoder after `input` was written to it in
/// 16 KiB chunks (output drained), and the ratio it reaches.
fn memory(name: &str, input: &[u8]) {
    println!(
        "\n### Streaming encoder state: {name} ({:.1} KiB fed in 16 KiB writes)\n",
        input.len() as f64 / 1024.0
    );
    println!("| encoder | heap held (KiB) | ratio |");
    println!("|---|---|---|");
    fn run<W: Write>(
        label: &str,
        input: &[u8],
        make: impl FnOnce() -> W,
        finish: impl FnOnce(W) -> Vec<u8>,
        out: impl Fn(&mut W) -> &mut Vec<u8>,
    ) {
        let before = LIVE.load(Ordering::Relaxed);
        let mut enc = make();
        let mut total = 0;
        for chunk in input.chunks(16 * 1024) {
            enc.write_all(chunk).expect("write");
            total += out(&mut enc).len();
            *out(&mut enc) = Vec::new();
        }
        let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        total += finish(enc).len();
        println!(
            "| {label} | {} | {:.2} |",
            held / 1024,
            input.len() as f64 / total as f64
        );
    }
    for (q, lgwin) in [
        (1, 20),
        (3, 17),
        (3, 18),
        (3, 20),
        (3, 22),
        (4, 18),
        (4, 20),
        (4, 22),
        (5, 20),
    ] {
        run(
            &format!("br q{q} lgwin {lgwin}"),
            input,
            || brotli::CompressorWriter::new(Vec::new(), 16 * 1024, q, lgwin),
            |w| w.into_inner(),
            |w| w.get_mut(),
        );
    }
    for level in [1, 3, 4, 6] {
        run(
            &format!("gzip {level}"),
            input,
            || flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level)),
            |w| w.finish().expect("finish"),
            |w| w.get_mut(),
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let js = synthetic_js(1 << 20);
    let html = synthetic_html(100 << 10);
    table("synthetic JS bundle", &js, &rt);
    table("synthetic HTML page", &html, &rt);
    for arg in std::env::args().skip(1) {
        let (label, paths) = arg.split_once('=').unwrap_or((arg.as_str(), arg.as_str()));
        let mut data = Vec::new();
        for path in paths.split(',') {
            data.extend(std::fs::read(path).expect("read corpus file"));
        }
        table(label, &data, &rt);
    }
    memory("synthetic JS bundle", &js);
    memory("synthetic HTML page", &html);
}
