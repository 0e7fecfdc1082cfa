//! The plans of the reads (issue 24), at a size where the planner has a choice: 50,000 posts
//! over two years, old posts holding the likes, one account that posted only long ago, a user
//! who follows it alone and one who follows 1,500 accounts; 20,000 users. `EXPLAIN` (no
//! `ANALYZE`, no timing) of the very statements the service runs (the SQL constants of `db::queries`) must show the
//! index each read is meant to go through, and no scan of the whole posts table.

use diesel::connection::SimpleConnection;
use diesel::sql_types::Text;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use sidechain::db::queries::{feed, search};

use crate::helpers::{TestApp, spawn_app};

const SEED: &str = "
INSERT INTO users (id, username, email, password_hash)
SELECT md5('u' || i)::uuid, substr(md5('name' || i), 1, 12), 'seed_' || i || '@example.com', 'x'
FROM generate_series(1, 20000) AS i;

INSERT INTO posts (id, author_id, title, description, tags, like_count, created_at)
SELECT md5('p' || i)::uuid, md5('u' || (3 + i % 1998))::uuid,
       (ARRAY['Late','Dusty','Sub','Tape','Rainy','Granular','Swing','Chopped','Warm','Velvet'])[1 + i % 10]
         || ' ' || (ARRAY['night','keys','pressure','pad','soul','groove','bells','drums','chords','melody'])[1 + (i / 10) % 10]
         || ' ' || (ARRAY['loop','sketch','demo','jam','idea'])[1 + (i / 100) % 5]
         || CASE WHEN i % 499 = 0 THEN ' zephyrine' ELSE '' END,
       CASE WHEN i % 2 = 0 THEN 'Made in one evening with a tape saturator, stems on request.' END,
       ARRAY[(ARRAY['chill','keys','drums','vocal','bass','synth'])[1 + i % 6]],
       CASE WHEN i <= 5000 THEN 100000 - i ELSE i % 5 END,
       now() - interval '730 days' + i * interval '730 days' / 50000
FROM generate_series(1, 50000) AS i;

-- User 1 follows user 2 only, who posted three times, two years ago.
INSERT INTO posts (id, author_id, title, created_at)
SELECT md5('quiet' || i)::uuid, md5('u2')::uuid, 'quiet ' || i, now() - interval '740 days' + i * interval '1 day'
FROM generate_series(1, 3) AS i;
INSERT INTO follows (follower_id, followee_id) VALUES (md5('u1')::uuid, md5('u2')::uuid);
-- User 3 follows 1,500 accounts.
INSERT INTO follows (follower_id, followee_id)
SELECT md5('u3')::uuid, md5('u' || i)::uuid FROM generate_series(4, 1503) AS i;
";

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

async fn seeded() -> (TestApp, PgConnection) {
    let app = spawn_app().await;
    let mut conn = PgConnection::establish(&app.db_url).expect("test database reachable");
    conn.batch_execute(SEED).expect("seed");
    // VACUUM also moves the GIN pending list into the index, as autovacuum would.
    diesel::sql_query("VACUUM ANALYZE")
        .execute(&mut conn)
        .expect("vacuum");
    (app, conn)
}

/// The plan of `sql` for these parameter values, as `EXPLAIN` prints it.
fn plan(conn: &mut PgConnection, sql: &str, args: &str) -> String {
    diesel::sql_query(format!("PREPARE read_plan AS {sql}"))
        .execute(conn)
        .expect("prepare");
    let lines = diesel::sql_query(format!("EXPLAIN EXECUTE read_plan({args})"))
        .load::<PlanLine>(conn)
        .expect("explain");
    diesel::sql_query("DEALLOCATE read_plan")
        .execute(conn)
        .expect("deallocate");
    lines
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_posts_scan(plan: &str) {
    assert!(!plan.contains("Seq Scan on posts"), "{plan}");
}

#[tokio::test]
async fn search_goes_through_its_indexes() {
    let (_app, mut conn) = seeded().await;
    // Where a window of the newest posts starts.
    let start = plan(
        &mut conn,
        search::WINDOW_START_SQL,
        &search::LAST_WINDOW.to_string(),
    );
    assert!(start.contains("posts_created_idx"), "{start}");
    assert_no_posts_scan(&start);
    // About 500 posts, the first window.
    let window = "now() - interval '7 days'";
    // Rare, common, a phrase with an exclusion, and no match at all; first and later pages.
    for (q, words) in [
        ("zephyrine", "zephyrine"),
        ("loop", "loop"),
        ("\"warm groove\" -demo", "warm groove"),
        ("qqqzzzx", "qqqzzzx"),
    ] {
        for after in [
            "NULL, NULL",
            "470.5, 'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        ] {
            let args = format!("'{q}', '{words}', {after}, 21");
            // Every match, ranked: through the GIN index.
            let all = plan(&mut conn, search::FULL_TEXT_SQL, &format!("{args}, NULL"));
            assert!(all.contains("posts_search_idx"), "{q}: {all}");
            assert_no_posts_scan(&all);
            // The window's matches: through the GIN index, or the window's range of the time
            // index, whichever is cheaper.
            let windowed = plan(
                &mut conn,
                search::FULL_TEXT_SQL,
                &format!("{args}, {window}"),
            );
            assert!(
                windowed.contains("posts_search_idx") || windowed.contains("posts_created_idx"),
                "{q}: {windowed}"
            );
            assert_no_posts_scan(&windowed);
        }
    }
    for q in ["zephyrin", "melodyy", "qqqzzzx"] {
        let all = plan(
            &mut conn,
            search::TRIGRAM_SQL,
            &format!("'{q}', NULL, NULL, 21, NULL"),
        );
        assert!(all.contains("posts_title_trgm_idx"), "{q}: {all}");
        assert_no_posts_scan(&all);
    }
    // A name's first five characters, and a misspelling of one.
    for words in [
        "substr(md5('name12'), 1, 5)",
        "'x' || substr(md5('name12'), 2, 8)",
    ] {
        let prefix = plan(
            &mut conn,
            search::USERS_PREFIX_SQL,
            &format!("{words} || '%', 20"),
        );
        assert!(prefix.contains("users_username_prefix_idx"), "{prefix}");
        assert!(!prefix.contains("Seq Scan on users"), "{prefix}");
        let similar = plan(
            &mut conn,
            search::USERS_SIMILAR_SQL,
            &format!("{words} || '%', {words}, 20"),
        );
        assert!(similar.contains("users_username_trgm_idx"), "{similar}");
        assert!(!similar.contains("Seq Scan on users"), "{similar}");
    }
}

#[tokio::test]
async fn the_timeline_goes_through_the_author_index() {
    let (_app, mut conn) = seeded().await;
    for user in ["u1", "u3"] {
        let plan = plan(
            &mut conn,
            feed::TIMELINE_MERGE_SQL,
            &format!("md5('{user}')::uuid, NULL, NULL, 21"),
        );
        assert!(plan.contains("posts_author_created_idx"), "{plan}");
        assert!(!plan.contains("posts_created_idx"), "{plan}");
        assert_no_posts_scan(&plan);
    }
    // The heavy follower's first try reads a bounded stretch of the newest posts.
    let plan = plan(
        &mut conn,
        feed::TIMELINE_RECENT_SQL,
        &format!("md5('u3')::uuid, NULL, NULL, 21, {}", feed::RECENT_WINDOW),
    );
    assert!(plan.contains("posts_created_idx"), "{plan}");
    assert!(plan.contains("Limit"), "{plan}");
    assert_no_posts_scan(&plan);
}

#[tokio::test]
async fn trending_reads_only_its_window() {
    let (_app, mut conn) = seeded().await;
    for after in [
        "NULL, NULL, NULL",
        "3, now(), 'ffffffff-ffff-ffff-ffff-ffffffffffff'",
    ] {
        let plan = plan(
            &mut conn,
            feed::TRENDING_SQL,
            &format!("now() - interval '7 days', {after}, 21"),
        );
        assert!(
            plan.contains("posts_created_idx") && plan.contains("Index Cond: (created_at >"),
            "{plan}"
        );
        assert_no_posts_scan(&plan);
    }
}
