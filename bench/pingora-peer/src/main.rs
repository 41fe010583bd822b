//! A featureless Pingora reverse proxy, the Pingora peer in `bench/run.sh`:
//! `pingora-peer LISTEN UPSTREAM [THREADS]`.
//!
//! Every request goes to UPSTREAM over a kept-alive HTTP/1.1 connection from Pingora's own
//! pool; no filter, no log, no TLS. It measures what Pingora's HTTP/1 stack costs here, next
//! to the bare hyper proxy (`crates/levee/examples/bare_proxy.rs`), so that ADR 0016 can weigh
//! building Levee on it with figures from this machine.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: pingora-peer LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    // Pingora's default runtime steals work between its threads; `PINGORA_WORK_STEALING=0`
    // gives each thread its own runtime, as Levee and the bare hyper proxy run.
    let work_stealing = std::env::var("PINGORA_WORK_STEALING").map_or(true, |v| v != "0");
    let conf = ServerConf {
        threads,
        work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream: upstream.clone(),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
