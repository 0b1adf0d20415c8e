//! The same gateway built the way gateways usually are, for `--naive`:
//! rmcp's `LocalSessionManager` as it comes, a `Mutex<HashMap>` of sessions
//! that nothing prunes, each upstream a plain tokio `Child` (`kill_on_drop`,
//! so killed directly, never its process group), and every upstream call a
//! detached `tokio::spawn` that nobody cancels. It answers the same MCP
//! requests; the waves show what it leaves behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorData, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::{RoleClient, RoleServer, ServerHandler, ServiceExt};

#[derive(Default)]
pub struct NaiveShared {
    /// session number -> upstream pid; entries are added, never removed.
    pub registry: Mutex<HashMap<u64, u32>>,
    pub next: AtomicU64,
    pub requests_in_flight: AtomicU64,
    pub children_started: AtomicU64,
    pub program: PathBuf,
}

struct Upstream {
    client: RunningService<RoleClient, ()>,
    _child: tokio::process::Child,
}

/// One per rmcp session (rmcp's factory makes one per session).
pub struct NaiveHandler {
    shared: Arc<NaiveShared>,
    upstream: tokio::sync::Mutex<Option<Arc<Upstream>>>,
}

impl NaiveHandler {
    pub fn new(shared: Arc<NaiveShared>) -> Self {
        NaiveHandler {
            shared,
            upstream: tokio::sync::Mutex::new(None),
        }
    }

    async fn upstream(&self) -> Result<Arc<Upstream>, ErrorData> {
        let mut slot = self.upstream.lock().await;
        if let Some(u) = &*slot {
            return Ok(u.clone());
        }
        let mut cmd = tokio::process::Command::new(&self.shared.program);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .env("MCP_GATEWAY_TAG", std::process::id().to_string())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| ErrorData::internal_error(format!("spawn: {e}"), None))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        if let Some(pid) = child.id() {
            self.shared.registry.lock().unwrap().insert(n, pid);
        }
        self.shared.children_started.fetch_add(1, Ordering::Relaxed);
        let client = ()
            .serve((stdout, stdin))
            .await
            .map_err(|e| ErrorData::internal_error(format!("upstream: {e}"), None))?;
        let u = Arc::new(Upstream {
            client,
            _child: child,
        });
        *slot = Some(u.clone());
        Ok(u)
    }
}

impl ServerHandler for NaiveHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let u = self.upstream().await?;
        u.client
            .peer()
            .list_tools(request)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let u = self.upstream().await?;
        let shared = self.shared.clone();
        shared.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        // Fire and forget: the client's cancellation never reaches it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let r = u.client.peer().call_tool(request).await;
            shared.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(r);
        });
        match rx.await {
            Ok(Ok(r)) => Ok(r.into()),
            Ok(Err(e)) => Err(ErrorData::internal_error(e.to_string(), None)),
            Err(_) => Err(ErrorData::internal_error("request task gone", None)),
        }
    }
}
