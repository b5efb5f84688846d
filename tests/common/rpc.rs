//! gRPC helpers: lazily connected channels, requests with a deadline, calls and whole test
//! bodies bounded in time, polling until a condition holds, and the Store calls and generated
//! items (`item_id`, `value_of`) that the tests share.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use futures::StreamExt;
use keepsake::proto::v1::store_client::StoreClient;
use keepsake::proto::v1::{
    Consistency, DeleteRequest, DeleteResponse, GetRequest, Item, ItemKey, ListRequest, PutRequest, PutResponse,
};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The deadline of an ordinary test request.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connected TLS channel to a node's client port, as the operator.
pub fn connect(addr: &str) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("a node address makes a valid URI")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .tls_config(super::tls::client_tls())
        .expect("the test TLS settings apply")
        .connect_lazy()
}

/// A request carrying a gRPC deadline.
pub fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(timeout);
    r
}

/// Awaits a unary call, giving up (DEADLINE_EXCEEDED) a second after `RPC_TIMEOUT`.
pub async fn bounded<T>(call: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
    bounded_for(RPC_TIMEOUT + Duration::from_secs(1), call).await
}

/// Awaits a unary call for at most `limit`.
pub async fn bounded_for<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("the test gave up waiting after {limit:?}"))),
    }
}

/// Runs a whole test body, failing it if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

/// Polls `probe` every 50 ms until it returns Some, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn key(user: &str, collection: &str, item_id: &str) -> ItemKey {
    ItemKey { user_id: user.into(), collection: collection.into(), item_id: item_id.into() }
}

/// The id of the i-th generated item.
pub fn item_id(i: usize) -> String {
    format!("item-{i:04}")
}

/// The value the i-th generated item of (user, collection) is written with.
pub fn value_of(user: &str, collection: &str, i: usize) -> Vec<u8> {
    format!("value of {user}/{collection}/{}", item_id(i)).into_bytes()
}

pub async fn put(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
    value: impl Into<Vec<u8>>,
) -> Result<PutResponse, Status> {
    put_if(client, user, collection, item_id, value, None).await
}

/// Put with an `if_revision` precondition.
pub async fn put_if(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
    value: impl Into<Vec<u8>>,
    if_revision: Option<u64>,
) -> Result<PutResponse, Status> {
    let message = PutRequest {
        key: Some(key(user, collection, item_id)),
        value: value.into(),
        content_type: "text/plain".into(),
        if_revision,
        durability: 0,
    };
    bounded(client.put(request(message, RPC_TIMEOUT))).await
}

/// A linearizable Get of the item.
pub async fn get(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
) -> Result<Item, Status> {
    get_with(client, user, collection, item_id, Consistency::Linearizable).await
}

pub async fn get_with(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
    consistency: Consistency,
) -> Result<Item, Status> {
    let message = GetRequest { key: Some(key(user, collection, item_id)), consistency: consistency as i32 };
    let response = bounded(client.get(request(message, RPC_TIMEOUT))).await?;
    response.item.ok_or_else(|| Status::internal("a GetResponse without an item"))
}

pub async fn delete(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
) -> Result<DeleteResponse, Status> {
    let message = DeleteRequest { key: Some(key(user, collection, item_id)), if_revision: None, durability: 0 };
    bounded(client.delete(request(message, RPC_TIMEOUT))).await
}

/// Every item of a collection, following `next_page_token` (at most 1,000 pages).
pub async fn list_all(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    consistency: Consistency,
    page_size: u32,
) -> Result<Vec<Item>, Status> {
    let mut items = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let message = ListRequest {
            user_id: user.into(),
            collection: collection.into(),
            page_token: token.clone(),
            page_size,
            consistency: consistency as i32,
        };
        let page = bounded(client.list(request(message, RPC_TIMEOUT))).await?;
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return Ok(items);
        }
        token = page.next_page_token;
    }
    Err(Status::internal(format!("List of {user}/{collection} did not end within 1000 pages")))
}

/// Writes items `ids` of (user, collection) with `value_of`, round-robin over `clients`,
/// `concurrency` at a time; panics on the first failed write. Returns (item id, response).
pub async fn write_items(
    clients: &[StoreClient<Channel>],
    user: &str,
    collection: &str,
    ids: Range<usize>,
    concurrency: usize,
) -> Vec<(String, PutResponse)> {
    assert!(!clients.is_empty(), "write_items needs at least one client");
    let writes = ids.map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let (user, collection) = (user.to_owned(), collection.to_owned());
        async move {
            let id = item_id(i);
            match put(&mut client, &user, &collection, &id, value_of(&user, &collection, i)).await {
                Ok(r) => Ok((id, r)),
                Err(e) => Err(format!("put {user}/{collection}/{id}: {:?} {}", e.code(), e.message())),
            }
        }
    });
    let results: Vec<Result<(String, PutResponse), String>> =
        futures::stream::iter(writes).buffer_unordered(concurrency.max(1)).collect().await;
    results.into_iter().map(|r| r.unwrap_or_else(|e| panic!("a write failed on a healthy cluster: {e}"))).collect()
}

/// Linearizable Gets of items `ids` of (user, collection), `concurrency` at a time; returns a
/// description of every item that is missing or has the wrong value.
pub async fn check_items(
    client: &StoreClient<Channel>,
    user: &str,
    collection: &str,
    ids: Range<usize>,
    concurrency: usize,
) -> Vec<String> {
    let reads = ids.map(|i| {
        let mut client = client.clone();
        let (user, collection) = (user.to_owned(), collection.to_owned());
        async move {
            let id = item_id(i);
            match get(&mut client, &user, &collection, &id).await {
                Ok(item) if item.value == value_of(&user, &collection, i) => None,
                Ok(item) => Some(format!("{id}: wrong value {:?}", String::from_utf8_lossy(&item.value))),
                Err(e) => Some(format!("{id}: {:?} {}", e.code(), e.message())),
            }
        }
    });
    futures::stream::iter(reads)
        .buffer_unordered(concurrency.max(1))
        .filter_map(|r| async move { r })
        .collect::<Vec<String>>()
        .await
}
