//! DynamoDB's transaction-conflict rule, without any I/O: which items a write names, which
//! in-flight transactions hold them, and the errors DynamoDB answers with.

use super::*;

/// One item: its table and its key attributes, as canonical JSON (`{"pk":{"S":"..."},...}` with
/// the names sorted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    pub table: String,
    pub key: String,
}

impl ItemKey {
    /// The item of `table` whose key attributes are `key` (an `AttributeValue` map in DynamoDB
    /// JSON).
    pub fn new(table: &str, key: &Map<String, Value>) -> Self {
        let sorted: BTreeMap<&String, &Value> = key.iter().collect();
        Self {
            table: table.to_owned(),
            key: serde_json::to_string(&sorted).unwrap_or_default(),
        }
    }

    /// The item a whole `Item` (a `Put`) writes, given the names of the table's key attributes;
    /// `None` when one of them is missing (the emulator refuses such a request anyway).
    pub fn of_item(table: &str, item: &Map<String, Value>, key_names: &[String]) -> Option<Self> {
        let mut key = Map::new();
        for name in key_names {
            key.insert(name.clone(), item.get(name)?.clone());
        }
        (!key.is_empty()).then(|| Self::new(table, &key))
    }
}

/// The DynamoDB writes the rule is about; everything else passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    TransactWriteItems,
    PutItem,
    UpdateItem,
    DeleteItem,
    BatchWriteItem,
}

impl WriteOp {
    /// The operation of an `X-Amz-Target` header value, if it is one of the writes.
    pub fn of_target(target: &str) -> Option<Self> {
        Some(match target.strip_prefix(DYNAMODB_TARGET_PREFIX)? {
            "TransactWriteItems" => Self::TransactWriteItems,
            "PutItem" => Self::PutItem,
            "UpdateItem" => Self::UpdateItem,
            "DeleteItem" => Self::DeleteItem,
            "BatchWriteItem" => Self::BatchWriteItem,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::TransactWriteItems => "TransactWriteItems",
            Self::PutItem => "PutItem",
            Self::UpdateItem => "UpdateItem",
            Self::DeleteItem => "DeleteItem",
            Self::BatchWriteItem => "BatchWriteItem",
        }
    }
}

/// One write of a request: its table and either its `Key` or its whole `Item` (a put).
#[derive(Debug, Clone, PartialEq)]
pub enum Target<'a> {
    Key(&'a str, &'a Map<String, Value>),
    Item(&'a str, &'a Map<String, Value>),
    /// A write whose table or key could not be read (left to the emulator to refuse).
    Unknown,
}

impl Target<'_> {
    /// The item written, with `schema` giving a table's key attribute names for puts.
    pub fn item(&self, schema: &dyn Fn(&str) -> Option<Vec<String>>) -> Option<ItemKey> {
        match *self {
            Target::Key(table, key) => Some(ItemKey::new(table, key)),
            Target::Item(table, item) => ItemKey::of_item(table, item, &schema(table)?),
            Target::Unknown => None,
        }
    }
}

pub(super) fn object<'a>(v: &'a Value, k: &str) -> Option<&'a Map<String, Value>> {
    v.get(k)?.as_object()
}

pub(super) fn string<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k)?.as_str()
}

pub(super) fn single<'a>(op: &'a Value, item_field: &str) -> Target<'a> {
    let Some(table) = string(op, "TableName") else {
        return Target::Unknown;
    };
    match (item_field, object(op, item_field)) {
        ("Item", Some(item)) => Target::Item(table, item),
        (_, Some(key)) => Target::Key(table, key),
        (_, None) => Target::Unknown,
    }
}

/// The writes of a request body, in order: one per transaction item, one for a single write,
/// one per `PutRequest`/`DeleteRequest` of a batch.
pub fn targets(op: WriteOp, body: &Value) -> Vec<Target<'_>> {
    match op {
        WriteOp::PutItem => vec![single(body, "Item")],
        WriteOp::UpdateItem | WriteOp::DeleteItem => vec![single(body, "Key")],
        WriteOp::TransactWriteItems => body
            .get("TransactItems")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|entry| {
                        if let Some(put) = entry.get("Put") {
                            single(put, "Item")
                        } else if let Some(op) = ["Update", "Delete", "ConditionCheck"]
                            .iter()
                            .find_map(|k| entry.get(*k))
                        {
                            single(op, "Key")
                        } else {
                            Target::Unknown
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        WriteOp::BatchWriteItem => object(body, "RequestItems")
            .map(|tables| {
                tables
                    .iter()
                    .flat_map(|(table, requests)| {
                        requests.as_array().into_iter().flatten().map(move |r| {
                            if let Some(item) = r.get("PutRequest").and_then(|p| object(p, "Item"))
                            {
                                Target::Item(table, item)
                            } else if let Some(key) =
                                r.get("DeleteRequest").and_then(|d| object(d, "Key"))
                            {
                                Target::Key(table, key)
                            } else {
                                Target::Unknown
                            }
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The tables whose key schema is needed to name the items of these writes (those with puts).
pub fn tables_of_puts(targets: &[Target<'_>]) -> Vec<String> {
    let mut tables: Vec<String> = Vec::new();
    for t in targets {
        if let Target::Item(table, _) = t
            && !tables.iter().any(|x| x == table)
        {
            tables.push((*table).to_owned());
        }
    }
    tables
}

/// The key attribute names of `table` as `DescribeTable` gave them; without that answer, those of
/// `pk` and `sk` (the project's key) that the written item has.
pub(super) fn key_names_or_fallback(
    schemas: &HashMap<String, Vec<String>>,
    table: &str,
    target: &Target<'_>,
) -> Vec<String> {
    if let Some(names) = schemas.get(table) {
        return names.clone();
    }
    let Target::Item(_, item) = target else {
        return Vec::new();
    };
    ["pk", "sk"]
        .into_iter()
        .filter(|n| item.contains_key(*n))
        .map(str::to_owned)
        .collect()
}

/// A transaction admitted by [`LockTable::begin`]; give it back to [`LockTable::finish`].
#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
pub struct TxnId(u64);

/// The items of the transactions in flight, and the rule.
#[derive(Debug, Default)]
pub struct LockTable {
    held: HashMap<ItemKey, TxnId>,
    txns: HashMap<TxnId, Vec<ItemKey>>,
    next: u64,
}

impl LockTable {
    /// A new transaction over `items` (in request order; `None`: an item whose key is unknown,
    /// never in conflict). Admitted, it holds every item until [`finish`](Self::finish); refused,
    /// the answer says which items are held by another transaction in flight.
    pub fn begin(&mut self, items: &[Option<ItemKey>]) -> Result<TxnId, Vec<bool>> {
        let conflicts = self.conflicts(items);
        if conflicts.iter().any(|c| *c) {
            return Err(conflicts);
        }
        self.next += 1;
        let id = TxnId(self.next);
        let mut mine: Vec<ItemKey> = Vec::new();
        // The same item twice in one transaction is the emulator's to refuse (ValidationException),
        // not a conflict with itself.
        let unique: HashSet<&ItemKey> = items.iter().flatten().collect();
        for item in unique {
            self.held.insert(item.clone(), id);
            mine.push(item.clone());
        }
        self.txns.insert(id, mine);
        Ok(id)
    }

    /// The transaction has been answered: its items are free.
    pub fn finish(&mut self, id: TxnId) {
        for item in self.txns.remove(&id).unwrap_or_default() {
            if self.held.get(&item) == Some(&id) {
                self.held.remove(&item);
            }
        }
    }

    /// For each item, whether a transaction in flight holds it.
    pub fn conflicts(&self, items: &[Option<ItemKey>]) -> Vec<bool> {
        items
            .iter()
            .map(|i| i.as_ref().is_some_and(|i| self.held.contains_key(i)))
            .collect()
    }

    pub fn transactions_in_flight(&self) -> usize {
        self.txns.len()
    }

    pub fn items_held(&self) -> usize {
        self.held.len()
    }
}

/// The body DynamoDB answers a transaction refused for conflicts with (HTTP 400).
pub fn canceled_body(conflicts: &[bool]) -> Value {
    let codes: Vec<&str> = conflicts
        .iter()
        .map(|c| if *c { "TransactionConflict" } else { "None" })
        .collect();
    let reasons: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            if *c {
                json!({"Code": "TransactionConflict", "Message": ONGOING})
            } else {
                json!({"Code": "None"})
            }
        })
        .collect();
    json!({
        "__type": format!("{ERROR_NAMESPACE}TransactionCanceledException"),
        "CancellationReasons": reasons,
        "Message": format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
            codes.join(", ")
        ),
    })
}

/// The body DynamoDB answers a single write on an item of an ongoing transaction with (HTTP 400).
pub fn conflict_body() -> Value {
    json!({
        "__type": format!("{ERROR_NAMESPACE}TransactionConflictException"),
        "message": ONGOING,
    })
}
