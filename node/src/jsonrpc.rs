//! JSON-RPC 2.0 dispatch on `jsonrpsee`: `POST /` is served by its HTTP
//! service (batches up to `rpc.max_batch`, bodies up to
//! `rpc.max_body_bytes`), and the calls of the WebSocket at `/websocket`
//! go through the same [`Methods`]. Every method takes named parameters
//! (an object) or positional ones (an array, in the order of
//! [`crate::rpc::METHODS`]), and runs [`crate::rpc::call`], the one place
//! the methods live (the `GET /<method>` form reaches it directly).
//!
//! jsonrpsee's own subscriptions are not used: they answer `subscribe`
//! with a subscription id and send `{"method", "params": {"subscription",
//! "result"}}` notifications, while `/websocket` keeps CometBFT's form
//! (events as responses to the `subscribe` request's id), so that part is
//! kept by hand in [`crate::ws`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use jsonrpsee::server::{
    stop_channel, BatchRequestConfig, Methods, RpcModule, Server, ServerConfig, ServerHandle,
    StopHandle, TowerServiceBuilder,
};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::{json, Value};
use tower::layer::util::Identity;
use tower::Service;

use crate::node::Node;
use crate::rpc::{code, err, reply, RpcError, Via, METHODS};

/// The JSON-RPC service: the registered methods and the HTTP service
/// builder over them.
pub struct JsonRpc {
    /// Every method of [`METHODS`], for direct calls (the WebSocket).
    pub methods: Methods,
    builder: TowerServiceBuilder<Identity, Identity>,
    stop: StopHandle,
    _handle: ServerHandle,
    /// `rpc.max_response_bytes`.
    max_response: usize,
}

/// jsonrpsee's code for a batch of more than `rpc.max_batch` calls.
pub const TOO_BIG_BATCH: i64 = jsonrpsee::types::error::TOO_BIG_BATCH_REQUEST_CODE as i64;
/// jsonrpsee's code for an answer over `rpc.max_response_bytes`.
pub const OVERSIZED_RESPONSE: i64 = jsonrpsee::types::error::OVERSIZED_RESPONSE_CODE as i64;
/// jsonrpsee's code for a batch whose answers together exceed it.
pub const TOO_BIG_BATCH_RESPONSE: i64 = jsonrpsee::types::error::TOO_BIG_BATCH_RESPONSE_CODE as i64;

fn rpc_error(e: RpcError) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(e.code as i32, e.message, None::<()>)
}

/// `params` as the named object [`crate::rpc::call`] takes: absent or
/// null is `{}`, an object is kept, an array is named by position after
/// `names`. Errors: more positional values than the method takes, or
/// params that are neither.
pub fn named_params(method: &str, names: &[&str], params: Option<&str>) -> Result<Value, RpcError> {
    let v: Value = match params {
        None => Value::Null,
        Some(s) => serde_json::from_str(s)
            .map_err(|e| err(code::INVALID_PARAMS, format!("params are not JSON: {e}")))?,
    };
    match v {
        Value::Null => Ok(json!({})),
        Value::Object(_) => Ok(v),
        Value::Array(items) if items.len() <= names.len() => {
            Ok(Value::Object(names.iter().zip(items).map(|(n, v)| (n.to_string(), v)).collect()))
        }
        Value::Array(items) => Err(err(
            code::INVALID_PARAMS,
            format!(
                "{method} takes at most {} positional parameters ({}), got {}",
                names.len(),
                names.join(", "),
                items.len()
            ),
        )),
        _ => Err(err(code::INVALID_PARAMS, "params must be an array or an object")),
    }
}

impl JsonRpc {
    /// Registers every method of [`METHODS`] on `node`, with the limits
    /// of `node.cfg.rpc`. Errors: a method name registered twice (a bug).
    pub fn new(node: &Arc<Node>) -> anyhow::Result<JsonRpc> {
        let mut module = RpcModule::new(());
        for &(name, names) in METHODS {
            let node = node.clone();
            module.register_async_method(name, move |params: Params<'static>, _, _| {
                let node = node.clone();
                async move {
                    let p = named_params(name, names, params.as_str()).map_err(rpc_error)?;
                    // POST and the WebSocket: the guard checked the
                    // Origin; only `GET /<method>` is `Via::Get`.
                    crate::rpc::call(&node, name, p, Via::JsonRpc).await.map_err(rpc_error)
                }
            })?;
        }
        let cfg = &node.cfg.rpc;
        let limit = u32::try_from(cfg.max_body_bytes).unwrap_or(u32::MAX);
        let server_cfg = ServerConfig::builder()
            .http_only()
            .max_request_body_size(limit)
            .max_response_body_size(u32::try_from(cfg.max_response_bytes).unwrap_or(u32::MAX))
            .max_connections(u32::try_from(cfg.max_connections).unwrap_or(u32::MAX))
            .set_batch_request_config(BatchRequestConfig::Limit(
                u32::try_from(cfg.max_batch).unwrap_or(u32::MAX),
            ))
            .build();
        let (stop, handle) = stop_channel();
        let builder = Server::builder().set_config(server_cfg).to_service_builder();
        Ok(JsonRpc {
            methods: module.into(),
            builder,
            stop,
            _handle: handle,
            max_response: cfg.max_response_bytes,
        })
    }

    /// Answers one WebSocket text message: a request or a batch (at most
    /// `max_batch`), through the registered methods. `local` answers the
    /// requests the WebSocket handles itself (subscriptions), or gives
    /// them back. The result is the response (an array for a batch).
    pub async fn call_text(
        &self,
        text: &str,
        max_batch: usize,
        mut local: impl FnMut(&Value) -> Option<Value>,
    ) -> Value {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return reply(Value::Null, Err(err(code::PARSE, format!("not JSON: {e}")))),
        };
        match v {
            Value::Array(items) if items.is_empty() => {
                reply(Value::Null, Err(err(code::INVALID_REQUEST, "an empty batch")))
            }
            Value::Array(items) if items.len() > max_batch => reply(
                Value::Null,
                Err(err(
                    TOO_BIG_BATCH,
                    format!(
                        "{} calls in a batch; at most {max_batch} (rpc.max_batch)",
                        items.len()
                    ),
                )),
            ),
            Value::Array(items) => {
                // The answers together stay within rpc.max_response_bytes:
                // once over it, the rest are errors, not answers.
                let (mut out, mut total) = (Vec::with_capacity(items.len()), 0usize);
                for item in items {
                    let id = item.get("id").cloned().unwrap_or(Value::Null);
                    let answer = if total > self.max_response {
                        let why = format!(
                            "the batch's answers exceed {} bytes (rpc.max_response_bytes)",
                            self.max_response
                        );
                        reply(id, Err(err(TOO_BIG_BATCH_RESPONSE, why)))
                    } else {
                        self.call_one(item, &mut local).await
                    };
                    total += answer.to_string().len();
                    out.push(answer);
                }
                Value::Array(out)
            }
            one => self.call_one(one, &mut local).await,
        }
    }

    async fn call_one(&self, req: Value, local: &mut impl FnMut(&Value) -> Option<Value>) -> Value {
        if let Some(answer) = local(&req) {
            return answer;
        }
        let text = req.to_string();
        match self.methods.raw_json_request(&text, 1).await {
            Ok((resp, _)) if resp.get().len() > self.max_response => {
                let id = req.get("id").cloned().unwrap_or(Value::Null);
                let why = format!(
                    "the answer is {} bytes, more than rpc.max_response_bytes ({})",
                    resp.get().len(),
                    self.max_response
                );
                reply(id, Err(err(OVERSIZED_RESPONSE, why)))
            }
            Ok((resp, _)) => serde_json::from_str(resp.get()).unwrap_or(Value::Null),
            Err(e) => {
                let id = req.get("id").cloned().unwrap_or(Value::Null);
                reply(id, Err(err(code::INVALID_REQUEST, format!("not a JSON-RPC request: {e}"))))
            }
        }
    }
}

/// `POST /`: the request (or batch) through jsonrpsee's HTTP service.
/// A body without a JSON content type (`curl -d` sends a form's) is taken
/// as JSON: the guard has already checked the `Origin`, so the content
/// type is no cross-site defence here.
pub async fn post(Extension(rpc): Extension<Arc<JsonRpc>>, mut req: Request) -> Response {
    if !jsonrpsee::server::http::is_json(req.headers().get(header::CONTENT_TYPE)) {
        req.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let mut service = rpc.builder.clone().build(rpc.methods.clone(), rpc.stop.clone());
    match service.call(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => {
            let body = reply(Value::Null, Err(err(code::INTERNAL, e.to_string())));
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_params_are_named_in_order() {
        let names = &["min_height", "max_height"];
        assert_eq!(named_params("blockchain", names, None).unwrap(), json!({}));
        assert_eq!(
            named_params("blockchain", names, Some("[1, 5]")).unwrap(),
            json!({"min_height": 1, "max_height": 5})
        );
        assert_eq!(
            named_params("blockchain", names, Some("[3]")).unwrap(),
            json!({"min_height": 3})
        );
        let obj = named_params("blockchain", names, Some(r#"{"max_height": 2}"#)).unwrap();
        assert_eq!(obj, json!({"max_height": 2}));
        let e = named_params("blockchain", names, Some("[1, 2, 3]")).unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert!(e.message.contains("at most 2"), "{}", e.message);
        assert!(named_params("blockchain", names, Some("7")).is_err());
    }
}
