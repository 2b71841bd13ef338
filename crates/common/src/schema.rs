//! The transaction schema: the 23 columns of the Kaggle / Sparkov `fraudTrain.csv` file as
//! Arrow types. Every reader (CSV, JSON from Kafka, Parquet) produces batches of exactly this
//! schema, so SQL written against one source runs unchanged against the others.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Column names, in file order. The first column is unnamed in the Kaggle CSV (a pandas row
/// index); we call it `row_id`.
pub mod col {
    pub const ROW_ID: &str = "row_id";
    pub const TRANS_DATE_TRANS_TIME: &str = "trans_date_trans_time";
    pub const CC_NUM: &str = "cc_num";
    pub const MERCHANT: &str = "merchant";
    pub const CATEGORY: &str = "category";
    pub const AMT: &str = "amt";
    pub const FIRST: &str = "first";
    pub const LAST: &str = "last";
    pub const GENDER: &str = "gender";
    pub const STREET: &str = "street";
    pub const CITY: &str = "city";
    pub const STATE: &str = "state";
    pub const ZIP: &str = "zip";
    pub const LAT: &str = "lat";
    pub const LONG: &str = "long";
    pub const CITY_POP: &str = "city_pop";
    pub const JOB: &str = "job";
    pub const DOB: &str = "dob";
    pub const TRANS_NUM: &str = "trans_num";
    pub const UNIX_TIME: &str = "unix_time";
    pub const MERCH_LAT: &str = "merch_lat";
    pub const MERCH_LONG: &str = "merch_long";
    pub const IS_FRAUD: &str = "is_fraud";
}

/// Column positions in [`transaction_schema`]; the codecs index arrays by these.
pub mod idx {
    pub const ROW_ID: usize = 0;
    pub const TRANS_DATE_TRANS_TIME: usize = 1;
    pub const CC_NUM: usize = 2;
    pub const MERCHANT: usize = 3;
    pub const CATEGORY: usize = 4;
    pub const AMT: usize = 5;
    pub const FIRST: usize = 6;
    pub const LAST: usize = 7;
    pub const GENDER: usize = 8;
    pub const STREET: usize = 9;
    pub const CITY: usize = 10;
    pub const STATE: usize = 11;
    pub const ZIP: usize = 12;
    pub const LAT: usize = 13;
    pub const LONG: usize = 14;
    pub const CITY_POP: usize = 15;
    pub const JOB: usize = 16;
    pub const DOB: usize = 17;
    pub const TRANS_NUM: usize = 18;
    pub const UNIX_TIME: usize = 19;
    pub const MERCH_LAT: usize = 20;
    pub const MERCH_LONG: usize = 21;
    pub const IS_FRAUD: usize = 22;
}

/// Number of columns in the schema.
pub const COLUMN_COUNT: usize = 23;

/// Arrow type of the event-time column. Microseconds without a zone: the Kaggle text carries
/// no zone, and `unix_time` confirms it is UTC wall-clock time.
pub const EVENT_TIME_TYPE: DataType = DataType::Timestamp(TimeUnit::Microsecond, None);

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use DataType::*;
    let field = |name: &str, data_type: DataType| Field::new(name, data_type, false);
    Arc::new(Schema::new(vec![
        field(col::ROW_ID, Int64),
        field(col::TRANS_DATE_TRANS_TIME, EVENT_TIME_TYPE),
        field(col::CC_NUM, Int64),
        field(col::MERCHANT, Utf8),
        field(col::CATEGORY, Utf8),
        field(col::AMT, Float64),
        field(col::FIRST, Utf8),
        field(col::LAST, Utf8),
        field(col::GENDER, Utf8),
        field(col::STREET, Utf8),
        field(col::CITY, Utf8),
        field(col::STATE, Utf8),
        field(col::ZIP, Int32),
        field(col::LAT, Float64),
        field(col::LONG, Float64),
        field(col::CITY_POP, Int64),
        field(col::JOB, Utf8),
        field(col::DOB, Date32),
        field(col::TRANS_NUM, Utf8),
        field(col::UNIX_TIME, Int64),
        field(col::MERCH_LAT, Float64),
        field(col::MERCH_LONG, Float64),
        field(col::IS_FRAUD, Int32),
    ]))
});

/// The Arrow schema of a transaction batch.
pub fn transaction_schema() -> SchemaRef {
    SCHEMA.clone()
}

static NULLABLE: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = SCHEMA
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
});

/// The transaction schema with every column nullable: a batch as read from a file, before
/// its rows are checked (a null is a bad row, not a bad file).
pub fn nullable_transaction_schema() -> SchemaRef {
    NULLABLE.clone()
}

/// Column names in file order.
pub fn column_names() -> Vec<&'static str> {
    vec![
        col::ROW_ID,
        col::TRANS_DATE_TRANS_TIME,
        col::CC_NUM,
        col::MERCHANT,
        col::CATEGORY,
        col::AMT,
        col::FIRST,
        col::LAST,
        col::GENDER,
        col::STREET,
        col::CITY,
        col::STATE,
        col::ZIP,
        col::LAT,
        col::LONG,
        col::CITY_POP,
        col::JOB,
        col::DOB,
        col::TRANS_NUM,
        col::UNIX_TIME,
        col::MERCH_LAT,
        col::MERCH_LONG,
        col::IS_FRAUD,
    ]
}

/// The 14 Sparkov merchant categories.
pub const CATEGORIES: [&str; 14] = [
    "entertainment",
    "food_dining",
    "gas_transport",
    "grocery_net",
    "grocery_pos",
    "health_fitness",
    "home",
    "kids_pets",
    "misc_net",
    "misc_pos",
    "personal_care",
    "shopping_net",
    "shopping_pos",
    "travel",
];

/// A stable 64-bit hash of a `trans_num` (FNV-1a: checkpoints outlive the process, so it
/// must not change with the Rust version as `DefaultHasher` may). Two of a card's few
/// dozen remembered rows collide with odds of about 1 in 10^16.
pub fn trans_num_hash(trans_num: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in trans_num.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_positions_agree_with_the_schema() {
        let schema = transaction_schema();
        assert_eq!(schema.fields().len(), COLUMN_COUNT);
        for (i, name) in column_names().into_iter().enumerate() {
            assert_eq!(schema.field(i).name(), name, "column {i}");
        }
        assert_eq!(schema.index_of(col::IS_FRAUD).ok(), Some(idx::IS_FRAUD));
        assert_eq!(schema.index_of(col::DOB).ok(), Some(idx::DOB));
        assert_eq!(schema.index_of(col::TRANS_NUM).ok(), Some(idx::TRANS_NUM));
    }
}
