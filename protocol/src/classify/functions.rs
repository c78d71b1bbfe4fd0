//! The built-in list of functions (and keywords that take parentheses) that read and change
//! nothing, so a statement calling only these may run on a replica. Anything not here, from
//! `nextval` to a user's own function, sends the statement to the primary.

/// Words that precede `(` as syntax, not as a call.
const SYNTAX: &[&str] = &[
    "all", "and", "any", "array", "as", "between", "by", "case", "cast", "coalesce", "cube", "distinct",
    "else", "except", "exists", "extract", "filter", "from", "greatest", "group", "grouping", "groups",
    "having", "ilike", "in", "intersect", "is", "join", "lateral", "least", "like", "limit", "not",
    "nullif", "offset", "on", "or", "over", "overlay", "partition", "position", "range", "recursive",
    "rollup", "row", "rows", "select", "similar", "some", "substring", "table", "tablesample", "then",
    "trim", "union", "using", "values", "when", "where", "window", "with", "within",
];

/// Read-only built-in functions and type names used as casts (`varchar(10)`).
const READ_ONLY: &[&str] = &[
    "abs", "age", "array_agg", "array_append", "array_cat", "array_length", "array_position",
    "array_positions", "array_remove", "array_replace", "array_to_json", "array_to_string", "ascii",
    "avg", "bigint", "bit", "bit_and", "bit_length", "bit_or", "bool", "bool_and", "bool_or", "boolean",
    "btrim", "cardinality", "cbrt", "ceil", "ceiling", "char", "char_length", "character",
    "character_length", "chr", "clock_timestamp", "concat", "concat_ws", "corr", "count", "cume_dist",
    "current_database", "current_schema", "current_schemas", "current_setting", "current_user", "date",
    "date_part", "date_trunc", "dec", "decimal", "decode", "degrees", "dense_rank", "div", "double",
    "encode", "every", "exp", "first_value", "float", "float4", "float8", "floor", "format",
    "format_type", "gen_random_uuid", "generate_series", "generate_subscripts", "has_column_privilege",
    "has_database_privilege", "has_schema_privilege", "has_table_privilege", "initcap", "int", "int2",
    "int4", "int8", "integer", "interval", "isfinite", "json", "json_agg", "json_array_elements",
    "json_array_elements_text", "json_array_length", "json_build_array", "json_build_object",
    "json_each", "json_each_text", "json_extract_path", "json_extract_path_text", "json_object",
    "json_object_agg", "json_object_keys", "json_populate_record", "json_strip_nulls", "json_typeof",
    "jsonb", "jsonb_agg", "jsonb_array_elements", "jsonb_array_elements_text", "jsonb_array_length",
    "jsonb_build_array", "jsonb_build_object", "jsonb_each", "jsonb_each_text", "jsonb_extract_path",
    "jsonb_extract_path_text", "jsonb_insert", "jsonb_object", "jsonb_object_agg", "jsonb_object_keys",
    "jsonb_path_exists", "jsonb_path_query", "jsonb_pretty", "jsonb_set", "jsonb_strip_nulls",
    "jsonb_typeof", "justify_days", "justify_hours", "justify_interval", "lag", "last_value", "lead",
    "left", "length", "ln", "localtime", "localtimestamp", "log", "log10", "lower", "lpad", "ltrim",
    "make_date", "make_interval", "make_time", "make_timestamp", "make_timestamptz", "max", "md5", "min",
    "mod", "now", "nth_value", "ntile", "numeric", "octet_length", "percent_rank", "percentile_cont",
    "percentile_disc", "pg_backend_pid", "pg_column_size", "pg_database_size", "pg_get_constraintdef",
    "pg_get_expr", "pg_get_indexdef", "pg_get_viewdef", "pg_indexes_size", "pg_is_in_recovery",
    "pg_postmaster_start_time", "pg_relation_size", "pg_size_pretty", "pg_sleep", "pg_table_is_visible",
    "pg_table_size", "pg_total_relation_size", "pg_typeof", "pi", "plainto_tsquery", "power",
    "quote_ident", "quote_literal", "quote_nullable", "radians", "random", "rank", "real",
    "regexp_count", "regexp_instr", "regexp_like", "regexp_match", "regexp_matches", "regexp_replace",
    "regexp_split_to_array", "regexp_split_to_table", "repeat", "replace", "reverse", "right", "round",
    "row_number", "row_to_json", "rpad", "rtrim", "setweight", "sha224", "sha256", "sha384", "sha512",
    "sign", "smallint", "split_part", "sqrt", "starts_with", "statement_timestamp", "stddev",
    "stddev_pop", "stddev_samp", "string_agg", "string_to_array", "strpos", "substr", "sum", "text",
    "time", "timeofday", "timestamp", "timestamptz", "to_char", "to_date", "to_hex", "to_json",
    "to_jsonb", "to_number", "to_timestamp", "to_tsquery", "to_tsvector", "transaction_timestamp",
    "translate", "trunc", "ts_headline", "ts_rank", "ts_rank_cd", "unnest", "upper", "uuid", "var_pop",
    "var_samp", "varchar", "variance", "version", "websearch_to_tsquery",
];

fn cmp_ci(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

fn contains(list: &[&str], word: &str) -> bool {
    list.binary_search_by(|probe| cmp_ci(probe, word)).is_ok()
}

/// Whether `word (` is syntax rather than a function call.
pub fn is_syntax(word: &str) -> bool {
    contains(SYNTAX, word)
}

/// Whether `name(...)` is a built-in that reads and changes nothing. `extra` is the config's own
/// additions, already lower-case and sorted.
pub fn is_read_only(name: &str, extra: &[String]) -> bool {
    contains(READ_ONLY, name) || extra.binary_search_by(|probe| cmp_ci(probe, name)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_for_binary_search() {
        for list in [SYNTAX, READ_ONLY] {
            for pair in list.windows(2) {
                assert_eq!(cmp_ci(pair[0], pair[1]), std::cmp::Ordering::Less, "{pair:?}");
            }
        }
    }

    #[test]
    fn lookups_ignore_case() {
        assert!(is_read_only("COUNT", &[]));
        assert!(!is_read_only("nextval", &[]));
        assert!(is_read_only("my_fn", &["my_fn".to_owned()]));
        assert!(is_syntax("EXISTS"));
    }
}
