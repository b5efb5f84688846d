//! The Store service (device gateways): validates each request, then writes through the
//! replica (group commit, forwarding) or reads local state after a read barrier.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keepsake_raft::{ItemView, Write};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::Reach;
use super::{deadline, status, validate};
use crate::proto::v1::store_server::Store;
use crate::proto::v1::*;
use crate::replica::Replica;

/// Items per message of an export or a changes page.
const CHUNK_ITEMS: usize = 256;

pub struct StoreService {
    replica: Arc<Replica>,
}

impl StoreService {
    pub fn new(replica: Arc<Replica>) -> Self {
        StoreService { replica }
    }

    fn limits(&self) -> &crate::limits::Limits {
        &self.replica.config().limits
    }

    fn deadline<T>(&self, req: &Request<T>) -> tokio::time::Instant {
        deadline::of(req, std::time::Duration::from_millis(self.limits().default_timeout_ms))
    }

    /// Runs the read barrier a consistency level asks for.
    async fn barrier(&self, consistency: Consistency, deadline: tokio::time::Instant) -> Result<(), Status> {
        match consistency {
            Consistency::Stale => Ok(()),
            _ => self.replica.read_barrier(deadline).await.map_err(status::from_error),
        }
    }

    async fn commit(
        &self,
        write: Write,
        archived: bool,
        deadline: tokio::time::Instant,
        batch: bool,
    ) -> Result<(Vec<u64>, u64, i64), Status> {
        let committed = self.replica.write(write, archived, deadline, false).await.map_err(status::from_error)?;
        let revisions = status::outcome(committed.outcome, batch)?;
        Ok((revisions, committed.log_index, committed.proposed_at_us))
    }
}

pub fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: us.div_euclid(1_000_000), nanos: (us.rem_euclid(1_000_000) * 1000) as i32 }
}

pub fn item(view: ItemView) -> Item {
    Item {
        key: Some(ItemKey { user_id: view.user_id, collection: view.collection, item_id: view.item_id }),
        value: view.record.value,
        content_type: view.record.content_type,
        revision: view.record.revision,
        log_index: view.record.log_index,
        updated_at: Some(timestamp(view.record.updated_at_us)),
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Store for StoreService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (deadline, reach) = (self.deadline(&request), Reach::of(&request));
        let (write, archived) = validate::put(self.limits(), request.into_inner())?;
        reach.user("Put", &write.user_id)?;
        let (revisions, log_index, at) = self.commit(write, archived, deadline, false).await?;
        Ok(Response::new(PutResponse { revision: revisions[0], log_index, updated_at: Some(timestamp(at)) }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (deadline, reach) = (self.deadline(&request), Reach::of(&request));
        let (key, consistency) = validate::get(self.limits(), request.get_ref())?;
        reach.user("Get", &key.user_id)?;
        self.barrier(consistency, deadline).await?;
        let found = self
            .replica
            .consensus()
            .reader()
            .get(&key.user_id, &key.collection, &key.item_id)
            .await
            .map_err(status::from_store)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no item {}/{}/{}; it was never written or has been deleted",
                    key.user_id, key.collection, key.item_id
                ))
            })?;
        Ok(Response::new(GetResponse { item: Some(item(found)) }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let (deadline, reach) = (self.deadline(&request), Reach::of(&request));
        let (write, archived) = validate::delete(self.limits(), request.into_inner())?;
        reach.user("Delete", &write.user_id)?;
        let (revisions, log_index, _) = self.commit(write, archived, deadline, false).await?;
        Ok(Response::new(DeleteResponse { revision: revisions[0], log_index }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let (deadline, reach) = (self.deadline(&request), Reach::of(&request));
        let q = validate::list(self.limits(), request.into_inner())?;
        reach.user("List", &q.user_id)?;
        self.barrier(q.consistency, deadline).await?;
        let (views, more) = self
            .replica
            .consensus()
            .reader()
            .list(&q.user_id, &q.collection, q.after, q.size)
            .await
            .map_err(status::from_store)?;
        let next_page_token =
            if more { views.last().map(|v| v.item_id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(ListResponse { items: views.into_iter().map(item).collect(), next_page_token }))
    }

    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        let (deadline, reach) = (self.deadline(&request), Reach::of(&request));
        let (write, archived) = validate::batch_request(self.limits(), request.into_inner())?;
        reach.user("Batch", &write.user_id)?;
        let (revisions, log_index, _) = self.commit(write, archived, deadline, true).await?;
        Ok(Response::new(BatchResponse { revisions, log_index }))
    }

    type ChangesStream = ResponseStream<Change>;

    async fn changes(&self, request: Request<ChangesRequest>) -> Result<Response<Self::ChangesStream>, Status> {
        let (deadline, reach) = (self.deadline(&request), Reach::of(&request));
        let req = request.into_inner();
        let consistency = validate::user_read(self.limits(), &req.user_id, req.consistency)?;
        reach.user("Changes", &req.user_id)?;
        self.barrier(consistency, deadline).await?;
        let meta = self.replica.consensus().reader().meta().await.map_err(status::from_store)?;
        if let Some(r) = meta.lost_range(req.since_revision) {
            return Err(Status::out_of_range(format!(
                "since_revision {} comes from writes lost in a disaster before this cluster was restored (at \
                 revision {}); resync in full: fetch Changes from revision 0 and replace the local copy",
                req.since_revision, r.restored
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let reader = self.replica.consensus().reader().clone();
        tokio::spawn(async move {
            let mut since = req.since_revision;
            let mut applied = reader.watch();
            loop {
                // Read what is there now; note the revision first so nothing slips between.
                let seen = applied.borrow_and_update().revision;
                let page = match reader.changes(&req.user_id, since, CHUNK_ITEMS).await {
                    Ok(p) => p,
                    Err(e) => return drop(tx.send(Err(status::from_store(e))).await),
                };
                let full = page.len() == CHUNK_ITEMS;
                for c in page {
                    since = c.revision;
                    let change = Change {
                        key: Some(ItemKey {
                            user_id: req.user_id.clone(),
                            collection: c.collection,
                            item_id: c.item_id,
                        }),
                        revision: c.revision,
                        deleted: c.item.is_none(),
                        item: c.item.map(item),
                    };
                    if tx.send(Ok(change)).await.is_err() {
                        return; // the client went away
                    }
                }
                if full {
                    continue;
                }
                if !req.follow {
                    return;
                }
                // Wait for apply to move past what we read, or for the client to leave.
                tokio::select! {
                    changed = applied.wait_for(|p| p.revision > seen) => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExportUserStream = ResponseStream<ExportChunk>;

    async fn export_user(
        &self,
        request: Request<ExportUserRequest>,
    ) -> Result<Response<Self::ExportUserStream>, Status> {
        let (deadline, reach) = (self.deadline(&request), Reach::of(&request));
        let req = request.into_inner();
        let consistency = validate::user_read(self.limits(), &req.user_id, req.consistency)?;
        reach.user("ExportUser", &req.user_id)?;
        self.barrier(consistency, deadline).await?;
        let (views_tx, mut views_rx) = mpsc::channel(2);
        let (tx, rx) = mpsc::channel(2);
        let reader = self.replica.consensus().reader().clone();
        tokio::spawn(async move { reader.export(&req.user_id, CHUNK_ITEMS, views_tx).await });
        tokio::spawn(async move {
            while let Some(chunk) = views_rx.recv().await {
                let msg = chunk
                    .map(|(revision, views)| ExportChunk { revision, items: views.into_iter().map(item).collect() })
                    .map_err(status::from_store);
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchArchivedStream = ResponseStream<ArchivedPosition>;

    async fn watch_archived(
        &self,
        _: Request<WatchArchivedRequest>,
    ) -> Result<Response<Self::WatchArchivedStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut archive = self.replica.archive().status.clone();
        let reader = self.replica.consensus().reader().clone();
        tokio::spawn(async move {
            let mut sent = None;
            loop {
                let index = archive.borrow_and_update().archived_index;
                if let Some(index) = index.filter(|i| sent.is_none_or(|s| *i > s)) {
                    // The revision there is known once this node has applied that far.
                    let mut applied = reader.watch();
                    tokio::select! {
                        reached = applied.wait_for(|p| p.index >= index) => if reached.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    match reader.digest_at(index).await {
                        Ok(Some(point)) => {
                            let position = ArchivedPosition { log_index: index, revision: point.revision };
                            if tx.send(Ok(position)).await.is_err() {
                                return;
                            }
                        }
                        // Older than this node's digest history: the next position will do.
                        Ok(None) => {}
                        Err(e) => return drop(tx.send(Err(status::from_store(e))).await),
                    }
                    sent = Some(index);
                }
                tokio::select! {
                    changed = archive.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
