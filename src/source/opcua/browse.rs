//! Browsing: children of a node, and browse paths resolved to node ids.
//!
//! Paths are resolved with Browse rather than TranslateBrowsePathsToNodeIds
//! because a path written in the config cannot know the server's namespace
//! indexes (they differ between servers and can change on a restart); a
//! segment matches by name unless it names its namespace (`3:Name`).

use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResultMask, ByteString, NodeClassMask, NodeId,
    ObjectId, ReferenceDescription, ReferenceTypeId, StatusCode,
};

use crate::source::opcua::config::{split_segment, NodeRef};

/// At most this many continuation rounds per node, so a server that keeps
/// handing out continuation points cannot hold the task forever.
const MAX_ROUNDS: usize = 100;

/// Forward hierarchical references of `node` (Organizes, HasComponent,
/// HasProperty and their subtypes), every request bounded by `timeout`.
pub async fn children(
    session: &Session,
    node: &NodeId,
    timeout: Duration,
) -> Result<Vec<ReferenceDescription>, StatusCode> {
    let desc = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: (NodeClassMask::OBJECT | NodeClassMask::VARIABLE).bits(),
        result_mask: BrowseResultMask::All as u32,
    };
    let mut out = Vec::new();
    let first = tokio::time::timeout(timeout, session.browse(&[desc], 1000, None))
        .await
        .map_err(|_| StatusCode::BadTimeout)?
        .map_err(|e| e.status())?;
    let Some(mut result) = first.into_iter().next() else {
        return Err(StatusCode::BadUnexpectedError);
    };
    for _ in 0..MAX_ROUNDS {
        if !result.status_code.is_good() {
            return Err(result.status_code);
        }
        out.extend(result.references.take().unwrap_or_default());
        let cp: ByteString = result.continuation_point.clone();
        if cp.is_null() || cp.is_empty() {
            return Ok(out);
        }
        let next = tokio::time::timeout(timeout, session.browse_next(false, &[cp]))
            .await
            .map_err(|_| StatusCode::BadTimeout)?
            .map_err(|e| e.status())?;
        match next.into_iter().next() {
            Some(r) => result = r,
            None => return Ok(out),
        }
    }
    Ok(out)
}

fn local(r: &ReferenceDescription) -> Option<NodeId> {
    (r.node_id.server_index == 0 && r.node_id.namespace_uri.is_null())
        .then(|| r.node_id.node_id.clone())
}

/// Follows `path` from `start`; `BadNoMatch` when a segment matches nothing.
pub async fn follow(
    session: &Session,
    start: &NodeId,
    path: &[String],
    timeout: Duration,
) -> Result<NodeId, StatusCode> {
    let Some((seg, rest)) = path.split_first() else {
        return Ok(start.clone());
    };
    let mut kids = children(session, start, timeout).await?;
    if seg == "*" {
        kids.sort_by(|a, b| a.browse_name.name.as_ref().cmp(b.browse_name.name.as_ref()));
        for k in &kids {
            let Some(id) = local(k) else { continue };
            match Box::pin(follow(session, &id, rest, timeout)).await {
                Ok(found) => return Ok(found),
                // A timeout means the session is in trouble; any other
                // failure (e.g. no access to an unrelated sibling) only
                // rules this child out.
                Err(StatusCode::BadTimeout) => return Err(StatusCode::BadTimeout),
                Err(_) => continue,
            }
        }
        return Err(StatusCode::BadNoMatch);
    }
    let (ns, name) = split_segment(seg);
    let hit = kids.iter().find(|k| {
        k.browse_name.name.as_ref() == name && ns.is_none_or(|n| k.browse_name.namespace_index == n)
    });
    match hit.and_then(local) {
        Some(id) => Box::pin(follow(session, &id, rest, timeout)).await,
        None => Err(StatusCode::BadNoMatch),
    }
}

/// The node a reference names: a node id as is, a path from `root` (or
/// from the Objects folder when there is no root).
pub async fn resolve(
    session: &Session,
    root: Option<&NodeId>,
    node: &NodeRef,
    timeout: Duration,
) -> Result<NodeId, StatusCode> {
    match node {
        NodeRef::Id(id) => Ok(id.clone()),
        NodeRef::Path(path) => {
            let objects: NodeId = ObjectId::ObjectsFolder.into();
            follow(session, root.unwrap_or(&objects), path, timeout).await
        }
    }
}
