//! The cache flow for GET and HEAD.

use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;

use crate::proxy::cache_status::Fwd;
use crate::proxy::{forward, Answered, ConnInfo, Runtime, Shared};

pub async fn serve(
    shared: &Shared,
    runtime: &Arc<Runtime>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Answered {
    forward::pass(shared, runtime, req, conn, Fwd::Bypass).await
}
