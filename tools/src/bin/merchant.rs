//! Operator command: creates a merchant (or gives an existing one a new API key) and prints
//! `MERCHANT_ID=` and `MERCHANT_API_KEY=`. The key is shown once; only its SHA-256 is stored.
//!
//! Usage: `merchant <merchant_id>` with `TABLE_NAME` and the usual AWS environment
//! (`AWS_ENDPOINT_URL` for an emulator); `make merchant ID=...` sets them from `.local/stack.env`.

use twochan_aws::{AwsClients, DynamoStore};
use twochan_domain::{
    MerchantId, Timestamp,
    crypto::{IssuedSecret, MERCHANT_KEY_PREFIX},
    ports::Directory,
};
use twochan_tools::stack::Stack;

#[tokio::main]
async fn main() {
    let id = std::env::args().nth(1).unwrap_or_default();
    let id = MerchantId::try_from(id.as_str()).unwrap_or_else(|e| {
        eprintln!("usage: merchant <merchant_id>   ({e})");
        std::process::exit(2);
    });
    let stack = Stack::load();
    let table = stack.require("TABLE_NAME").unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let clients = AwsClients::load().await;
    let store = DynamoStore::new(clients.dynamodb, table);
    let key = IssuedSecret::generate(MERCHANT_KEY_PREFIX);
    if let Err(e) = store.put_merchant(&id, &key.hash, Timestamp::now()).await {
        eprintln!("could not create merchant {id}: {e}");
        std::process::exit(1);
    }
    println!("MERCHANT_ID={id}");
    println!("MERCHANT_API_KEY={}", key.secret);
}
