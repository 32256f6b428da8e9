//! The request an origin call is made from, kept apart from the client's exchange.

use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Extensions, Method, Request, Uri, Version};

use super::conditional::CLIENT_CONDITIONALS;
use super::key::host_correction;
use super::stored::remove_present;

/// The parts of a request an origin call is made from: the miss's own request, or for a
/// background refresh the request that found the entry stale (as nginx's background update
/// does) with the storing request's credentials (see [`Credentials`]). Not kept with the
/// entry: a refresh copies the request that triggers it.
#[derive(Debug)]
pub(crate) struct RequestTemplate {
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) extensions: Extensions,
    /// The tag purge generation when the load began: purges of its response's tags after
    /// this apply to the entry it becomes.
    pub(crate) tag_generation: u64,
}

impl RequestTemplate {
    pub(crate) fn capture<B>(request: &Request<B>) -> Self {
        let mut headers = request.headers().clone();
        if let Some(host) = host_correction(request.uri(), &headers) {
            headers.insert(header::HOST, host);
        }
        // Conditionals, ranges and the connection's own headers belong to one client's
        // exchange, not to a refresh (a refresh has no body and its own connection).
        remove_present(&mut headers, &CLIENT_CONDITIONALS);
        remove_present(&mut headers, &CONNECTION_HEADERS);
        Self {
            uri: request.uri().clone(),
            version: request.version(),
            headers,
            extensions: request.extensions().clone(),
            tag_generation: super::tags::generation(),
        }
    }

    pub(crate) fn rebuild<B: Default>(&self) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request
    }

    pub(crate) fn parts(&self) -> Parts {
        self.rebuild::<()>().into_parts().0
    }
}

/// Request headers a refresh never copies from the request that triggers it.
pub(crate) const CONNECTION_HEADERS: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::EXPECT,
];
