//! The one HTTP client builder for calls Levee makes on its own behalf (LLM providers,
//! JWKS, the OTLP collector, alert receivers): http or https with the webpki roots, HTTP/1,
//! no Nagle, a connect timeout. The data plane's upstream pools live in `upstream`.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

/// A pooled client for `http` and `https` URLs.
pub type OutboundClient<B> = Client<hyper_rustls::HttpsConnector<HttpConnector>, B>;

/// A client whose connections time out after `connect_timeout` and idle out after 90 s.
pub fn client<B>(connect_timeout: Duration) -> OutboundClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}
