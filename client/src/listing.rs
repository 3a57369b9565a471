//! Listings of any size: a directory (or a whole tree) walked page by page.
//!
//! What must stay true: every page is a separate request, so no reply grows with the
//! directory; pages are handed on as they arrive (a caller printing them never holds the whole
//! listing); the cursor of each page is the server's opaque token, passed back unchanged.
use crate::meta::MetaConn;
use crate::rpc;
use dfs_proto::{FileInfo, ListRequest};
use tonic::Status;

/// Entries asked for per page (the server's cap).
pub const PAGE: u32 = 1000;

impl MetaConn {
    /// Every entry of `path` (below it when `recursive`; the file itself when it is a file),
    /// handed to `on_page` one page at a time, in path order. `stale`: from the answering
    /// node's applied state, without a leadership check.
    pub async fn list_pages(
        &self,
        path: &str,
        recursive: bool,
        stale: bool,
        mut on_page: impl FnMut(Vec<FileInfo>),
    ) -> Result<(), Status> {
        let mut after = String::new();
        loop {
            let req = ListRequest {
                path: path.to_string(),
                recursive,
                stale,
                after: after.clone(),
                limit: PAGE,
            };
            let r = rpc!(self, list, req)?;
            on_page(r.entries);
            if r.next.is_empty() {
                return Ok(());
            }
            after = r.next;
        }
    }

    /// Every entry of a listing, collected (for callers that need them all at once).
    pub async fn list_all(
        &self,
        path: &str,
        recursive: bool,
        stale: bool,
    ) -> Result<Vec<FileInfo>, Status> {
        let mut all = Vec::new();
        self.list_pages(path, recursive, stale, |p| all.extend(p))
            .await?;
        Ok(all)
    }
}
