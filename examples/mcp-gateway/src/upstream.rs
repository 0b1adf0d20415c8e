//! The stdio MCP server each gateway session owns as a scoped child process.
//!
//! Tools:
//! - `echo {text}`: answers the text;
//! - `sleep {ms}`: sleeps, and stops at once when the call is cancelled;
//! - `stubborn {}`: ignores cancellation; only the end of its stdin (the
//!   gateway's escalation hook closes it) ends it, with the whole server;
//! - `fork {}`: starts `sleep 3600` in this server's process group and
//!   forgets it, as a careless tool would: only a group kill reaches it;
//! - `crash {}`: the server exits in the middle of the call.
//!
//! `--exit-at-start` makes the server exit before it reads anything, as a
//! broken installation would.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt};
use serde_json::json;

struct Upstream;

fn tool(name: &'static str, description: &'static str, schema: serde_json::Value) -> Tool {
    let serde_json::Value::Object(schema) = schema else {
        unreachable!("schemas are objects")
    };
    Tool::new(name, description, Arc::new(schema))
}

fn tools() -> Vec<Tool> {
    let empty = json!({"type": "object", "properties": {}});
    vec![
        tool(
            "echo",
            "Answers its text.",
            json!({"type": "object", "properties": {"text": {"type": "string"}}}),
        ),
        tool(
            "sleep",
            "Sleeps `ms` milliseconds; cancellable.",
            json!({"type": "object", "properties": {"ms": {"type": "integer"}}}),
        ),
        tool(
            "stubborn",
            "Ignores cancellation until stdin closes.",
            empty.clone(),
        ),
        tool(
            "fork",
            "Leaves a grandchild in the process group.",
            empty.clone(),
        ),
        tool("crash", "Exits the server mid-call.", empty),
    ]
}

fn text(s: impl Into<String>) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(s)]).into()
}

impl ServerHandler for Upstream {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        match &*request.name {
            "echo" => Ok(text(
                args.get("text")
                    .and_then(|t| t.as_str())
                    .unwrap_or_default(),
            )),
            "sleep" => {
                let ms = args.get("ms").and_then(|m| m.as_u64()).unwrap_or(1000);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(text(format!("slept {ms} ms"))),
                    () = context.ct.cancelled() => Err(ErrorData::internal_error("sleep cancelled", None)),
                }
            }
            // Never looks at `context.ct`: the process ends when stdin does.
            "stubborn" => std::future::pending().await,
            "fork" => {
                let child = std::process::Command::new("sleep")
                    .arg("3600")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| ErrorData::internal_error(format!("fork: {e}"), None))?;
                let pid = child.id();
                std::mem::forget(child);
                Ok(text(format!("grandchild {pid}")))
            }
            "crash" => std::process::exit(3),
            other => Err(ErrorData::invalid_params(
                format!("unknown tool {other:?}"),
                None,
            )),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--exit-at-start") {
        eprintln!("mcp-upstream: exiting at start (--exit-at-start)");
        std::process::exit(2);
    }
    let service = match Upstream.serve(rmcp::transport::stdio()).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!("mcp-upstream: initialize failed: {e}");
            std::process::exit(1);
        }
    };
    let _ = service.waiting().await;
    // stdin closed: whatever still runs (a `stubborn` call) ends with us.
    std::process::exit(0);
}
