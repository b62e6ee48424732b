//! `list_calls` (GET /calls) against a real PostgreSQL: filters, order, page bounds, and
//! keyset pagination while Calls are being written.

use std::collections::BTreeSet;

use calls_domain::models::{CallFilter, CallListQuery, CallPage, CallPosition, PageLimit};
use calls_domain::{Call, CallRepository, CallSid, CallStatus, NewCall};
use calls_store_postgres::PgCallRepository;
use calls_store_postgres::testing::TestDatabase;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2025-01-01 00:00:00 UTC);

async fn add(
    repo: &PgCallRepository,
    call_sid: &str,
    driver_id: Option<i64>,
    start: OffsetDateTime,
    status: CallStatus,
) -> Call {
    let sid = CallSid::parse(call_sid).expect("sid");
    let call = repo
        .create_call(&NewCall {
            call_sid: sid.clone(),
            driver_id,
            call_start_time: start,
        })
        .await
        .expect("created");
    if status == CallStatus::InProgress {
        return call;
    }
    repo.set_status(&sid, status, Some(start + Duration::minutes(3)), None)
        .await
        .expect("status set")
}

fn limit(n: i64) -> PageLimit {
    PageLimit::new(n).expect("valid limit")
}

fn filter(
    status: Option<CallStatus>,
    driver_id: Option<i64>,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
) -> CallFilter {
    CallFilter::new(status, driver_id, since, until).expect("valid filter")
}

async fn page(
    repo: &PgCallRepository,
    filter: CallFilter,
    limit: PageLimit,
    after: Option<CallPosition>,
) -> CallPage {
    repo.list_calls(&CallListQuery {
        filter,
        limit,
        after,
    })
    .await
    .expect("listed")
}

/// Follows `next` to the end; returns the pages.
async fn walk(repo: &PgCallRepository, filter: CallFilter, limit: PageLimit) -> Vec<CallPage> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = page(repo, filter, limit, after).await;
        after = page.next;
        pages.push(page);
        if after.is_none() {
            return pages;
        }
        assert!(pages.len() < 1000, "the walk does not end");
    }
}

fn ids(calls: &[Call]) -> Vec<i64> {
    calls.iter().map(|c| c.id).collect()
}

fn flat(pages: &[CallPage]) -> Vec<i64> {
    pages.iter().flat_map(|p| ids(&p.calls)).collect()
}

/// What the listing must return, computed in Rust from every Call.
fn expected(all: &[Call], filter: &CallFilter) -> Vec<i64> {
    let mut matching: Vec<&Call> = all.iter().filter(|c| filter.matches(c)).collect();
    matching.sort_by_key(|c| std::cmp::Reverse((c.call_start_time, c.id)));
    matching.iter().map(|c| c.id).collect()
}

/// 24 Calls: 3 drivers (and one without), 3 statuses, start times spread over a day with
/// repeats, inserted out of time order.
async fn mixed_calls(repo: &PgCallRepository) -> Vec<Call> {
    let statuses = [
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::InProgress,
        CallStatus::Completed,
    ];
    let mut all = Vec::new();
    for i in 0..24_i64 {
        let driver = if i % 7 == 6 { None } else { Some(100 + i % 3) };
        // Hours 0..12 in a scrambled order; every start time is used twice.
        let hour = (i * 5) % 12;
        let status = statuses[usize::try_from(i % 4).expect("small")];
        all.push(
            add(
                repo,
                &format!("EL_mixed_{i}"),
                driver,
                T0 + Duration::hours(hour),
                status,
            )
            .await,
        );
    }
    all
}

#[tokio::test]
async fn calls_are_listed_newest_first_and_ties_on_start_time_go_by_id_descending() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let older = add(&repo, "EL_1_old", Some(1), T0, CallStatus::Completed).await;
    let names: Vec<String> = (0..5).map(|i| format!("EL_2_tie{i}")).collect();
    let tied: Vec<Call> = futures_util::future::join_all(names.iter().map(|name| {
        add(
            &repo,
            name,
            Some(2),
            T0 + Duration::HOUR,
            CallStatus::Completed,
        )
    }))
    .await;
    let newest = add(
        &repo,
        "EL_3_new",
        Some(3),
        T0 + Duration::hours(2),
        CallStatus::Failed,
    )
    .await;

    // Pages of 2 cut through the group of identical start times.
    let pages = walk(&repo, CallFilter::default(), limit(2)).await;

    let mut tied_ids = ids(&tied);
    tied_ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut want = vec![newest.id];
    want.extend(tied_ids);
    want.push(older.id);
    assert_eq!(flat(&pages), want);
    assert_eq!(pages.len(), 4, "7 calls in pages of 2");
    assert_eq!(
        pages[0].calls[0], newest,
        "a listed Call is the same Call a lookup returns"
    );
}

#[tokio::test]
async fn each_filter_alone_returns_exactly_the_matching_calls_in_order() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let all = mixed_calls(&repo).await;
    let t = |h| Some(T0 + Duration::hours(h));

    let filters = [
        filter(Some(CallStatus::InProgress), None, None, None),
        filter(Some(CallStatus::Completed), None, None, None),
        filter(Some(CallStatus::Failed), None, None, None),
        filter(None, Some(101), None, None),
        filter(None, Some(999), None, None),
        filter(None, None, t(5), None),
        filter(None, None, None, t(5)),
        filter(None, None, t(3), t(8)),
    ];
    for f in filters {
        let want = expected(&all, &f);
        let got = flat(&walk(&repo, f, limit(3)).await);
        assert_eq!(got, want, "{f:?}");
    }
    assert!(
        expected(&all, &filters[0]).len() >= 5 && expected(&all, &filters[4]).is_empty(),
        "the data set exercises both matches and misses"
    );
}

#[tokio::test]
async fn combined_filters_return_the_intersection() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let all = mixed_calls(&repo).await;
    let t = |h| Some(T0 + Duration::hours(h));

    let filters = [
        filter(Some(CallStatus::Completed), Some(100), None, None),
        filter(Some(CallStatus::Failed), None, t(2), t(10)),
        filter(None, Some(102), t(4), None),
        filter(Some(CallStatus::Completed), Some(101), t(1), t(11)),
        filter(Some(CallStatus::InProgress), Some(100), t(0), t(1)),
    ];
    let mut non_empty = 0;
    for f in filters {
        let want = expected(&all, &f);
        non_empty += usize::from(!want.is_empty());
        let got = flat(&walk(&repo, f, limit(2)).await);
        assert_eq!(got, want, "{f:?}");
    }
    assert!(non_empty >= 3, "most combinations match something");
}

#[tokio::test]
async fn since_is_inclusive_and_until_exclusive_to_the_microsecond() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let at = T0 + Duration::hours(1);
    let before = add(
        &repo,
        "EL_1_before",
        Some(1),
        at - Duration::MICROSECOND,
        CallStatus::Completed,
    )
    .await;
    let exactly = add(&repo, "EL_1_at", Some(1), at, CallStatus::Completed).await;
    let end = add(
        &repo,
        "EL_1_end",
        Some(1),
        at + Duration::HOUR,
        CallStatus::Completed,
    )
    .await;

    let inside = page(
        &repo,
        filter(None, None, Some(at), Some(at + Duration::HOUR)),
        limit(50),
        None,
    )
    .await;
    let from_end = page(
        &repo,
        filter(None, None, Some(end.call_start_time), None),
        limit(50),
        None,
    )
    .await;
    let until_at = page(&repo, filter(None, None, None, Some(at)), limit(50), None).await;

    assert_eq!(ids(&inside.calls), [exactly.id]);
    assert_eq!(ids(&from_end.calls), [end.id]);
    assert_eq!(ids(&until_at.calls), [before.id]);
}

#[tokio::test]
async fn page_sizes_one_and_five_hundred_are_exact_and_the_last_page_has_no_next() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    // 501 Calls, one second apart.
    db.execute(
        "INSERT INTO calls (call_sid, driver_id, call_start_time, status, created_at, updated_at)
         SELECT 'EL_bulk_' || g, g % 5, timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second',
                'completed', now(), now()
         FROM generate_series(1, 501) AS g",
    )
    .await;

    let big = walk(&repo, CallFilter::default(), limit(500)).await;
    let one = page(&repo, CallFilter::default(), limit(1), None).await;
    let exactly_full = walk(
        &repo,
        filter(None, None, None, Some(T0 + Duration::seconds(101))),
        limit(50),
    )
    .await;

    assert_eq!(
        big.iter().map(|p| p.calls.len()).collect::<Vec<_>>(),
        [500, 1]
    );
    assert_eq!(big[0].next, big[0].calls.last().map(CallPosition::of));
    assert_eq!(big[1].next, None);
    assert_eq!(flat(&big).len(), 501);
    assert_eq!(one.calls.len(), 1);
    assert_eq!(
        one.calls[0].call_start_time,
        T0 + Duration::seconds(501),
        "the newest"
    );
    assert!(one.next.is_some());
    // 100 matching Calls in pages of 50: the second page is full and still the last.
    assert_eq!(
        exactly_full
            .iter()
            .map(|p| p.calls.len())
            .collect::<Vec<_>>(),
        [50, 50]
    );
    assert_eq!(exactly_full[1].next, None);
}

#[tokio::test]
async fn an_empty_listing_is_one_empty_page_without_next() {
    let db = TestDatabase::new().await;
    let repo = db.repository();

    let pages = walk(&repo, CallFilter::default(), limit(10)).await;

    assert_eq!(pages.len(), 1);
    assert!(pages[0].calls.is_empty());
    assert_eq!(pages[0].next, None);
}

#[tokio::test]
async fn pages_neither_repeat_nor_skip_a_call_while_new_calls_are_inserted_between_pages() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    // 30 Calls, three to a start time, so page boundaries fall inside groups of ties.
    let mut existing = BTreeSet::new();
    for i in 0..30_i64 {
        let call = add(
            &repo,
            &format!("EL_walk_{i}"),
            Some(i % 4),
            T0 + Duration::minutes(i / 3),
            CallStatus::Completed,
        )
        .await;
        existing.insert(call.id);
    }

    let mut seen = Vec::new();
    let mut after = None;
    let mut inserted = 0;
    loop {
        let page = page(&repo, CallFilter::default(), limit(4), after).await;
        seen.extend(ids(&page.calls));
        let Some(next) = page.next else { break };
        // Between pages, as the service would: new Calls now (newest of all), one at the
        // very start time the cursor stopped on (it gets a higher id, so it sorts before
        // the cursor), and one older than everything (not yet walked).
        add(
            &repo,
            &format!("EL_new_now_{inserted}"),
            Some(9),
            OffsetDateTime::now_utc(),
            CallStatus::InProgress,
        )
        .await;
        add(
            &repo,
            &format!("EL_new_tie_{inserted}"),
            Some(9),
            next.call_start_time,
            CallStatus::InProgress,
        )
        .await;
        add(
            &repo,
            &format!("EL_new_old_{inserted}"),
            Some(9),
            T0 - Duration::days(1 + inserted),
            CallStatus::InProgress,
        )
        .await;
        inserted += 1;
        after = Some(next);
    }

    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no Call is listed twice: {seen:?}"
    );
    assert!(
        existing.is_subset(&unique),
        "every Call that existed before the walk is listed: missing {:?}",
        existing.difference(&unique).collect::<Vec<_>>()
    );
    assert!(inserted >= 7, "the walk took several pages ({inserted})");
    // The older Calls written during the walk lie ahead of the cursor, so they are listed too.
    let all = walk(&repo, CallFilter::default(), limit(500)).await;
    let old_new: Vec<i64> = all[0]
        .calls
        .iter()
        .filter(|c| c.call_sid.as_str().starts_with("EL_new_old_"))
        .map(|c| c.id)
        .collect();
    assert!(old_new.iter().all(|id| unique.contains(id)));
}
