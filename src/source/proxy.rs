//! Which proxy Truto's requests go through. reqwest takes it from the environment
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, in either case, minus the hosts in `NO_PROXY`),
//! where an operator may not know it is set (a platform that injects a cluster-wide proxy):
//! what fails at the proxy would otherwise read as Truto failing. The same matcher reqwest uses
//! (hyper-util's) says which proxy applies, so what this reports is what reqwest does.

use reqwest::Url;

/// Where the proxy came from, for messages.
pub const PROXY_SOURCE: &str = "the environment's HTTPS_PROXY, HTTP_PROXY or ALL_PROXY";

/// The proxy requests to `url` go through, as `scheme://host:port` (never its credentials);
/// `None` when they go straight to it.
pub fn proxy_for(url: &Url) -> Option<String> {
    let uri: http::Uri = url.as_str().parse().ok()?;
    let intercept = hyper_util::client::proxy::matcher::Matcher::from_system().intercept(&uri)?;
    let proxy = intercept.uri();
    let port = proxy
        .port_u16()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    Some(format!(
        "{}://{}{port}",
        proxy.scheme_str().unwrap_or("http"),
        proxy.host()?
    ))
}
