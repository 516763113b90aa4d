-- The crowd loop's two requests, each one round trip on PostgreSQL (migration 0004).
--
-- These are the database form of labeling.services.assignment.next_item (default ordering)
-- and labeling.services.votes._record_vote: same checks, same order, same rows written.
-- Python keeps the rules that are not on the hot path (replaying a retried key, messages,
-- gold evaluation, queueing aggregation) and the other databases use the Python services.
-- Inside a PL/pgSQL function every statement takes a fresh snapshot (READ COMMITTED), so the
-- capacity re-check after locking a candidate sees every lease committed before the lock.
-- A change to either function is a new migration with a new file; never edit this one.

CREATE OR REPLACE FUNCTION quorum_worker_progress(p_worker integer, p_project bigint, p_midnight timestamptz)
RETURNS TABLE (votes_today bigint, voted_open bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*) FILTER (WHERE v.created_at >= p_midnight),
           count(*) FILTER (WHERE NOT i.is_gold AND i.vote_count < i.votes_wanted)
    FROM labeling_vote v JOIN labeling_item i ON i.id = v.item_id
    WHERE v.project_id = p_project AND v.worker_id = p_worker
$$;


-- outcome: 'held' (a live lease of the worker, returned again), 'new', 'none' (nothing left),
-- 'too_many' (detail = number of live leases held).
CREATE OR REPLACE FUNCTION quorum_next_lease(
    p_worker integer, p_project bigint, p_now timestamptz, p_expires timestamptz,
    p_exclude bigint[], p_draw_gold boolean, p_max_live integer, p_max_attempts integer,
    p_midnight timestamptz)
RETURNS TABLE (outcome text, detail text, lease_id bigint, lease_expires timestamptz,
               item_id bigint, width integer, height integer, channels smallint, is_gold boolean,
               votes_today bigint, voted_open bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    r record;
    held integer := 0;
    expired bigint[] := '{}';
    tried bigint[] := '{}';
    cand record;
    free integer;
    new_id bigint;
    result_outcome text;
    result_lease bigint;
    result_expires timestamptz;
BEGIN
    -- Every open lease of the worker here, live or not (lease_open_worker_idx).
    FOR r IN
        SELECT a.id, a.expires_at, i.id AS iid, i.width, i.height, i.channels, i.is_gold
        FROM labeling_assignment a JOIN labeling_item i ON i.id = a.item_id
        WHERE a.worker_id = p_worker AND a.project_id = p_project AND a.status = 'open'
        ORDER BY a.created_at, a.id
    LOOP
        IF r.expires_at > p_now THEN
            IF NOT (r.id = ANY (p_exclude)) THEN
                RETURN QUERY SELECT 'held', NULL::text, r.id, r.expires_at, r.iid, r.width,
                    r.height, r.channels, r.is_gold, p.votes_today, p.voted_open
                    FROM quorum_worker_progress(p_worker, p_project, p_midnight) p;
                RETURN;
            END IF;
            held := held + 1;
        ELSE
            expired := expired || r.id;
        END IF;
    END LOOP;
    IF held >= p_max_live THEN
        RETURN QUERY SELECT 'too_many', held::text, NULL::bigint, NULL::timestamptz,
            NULL::bigint, NULL::integer, NULL::integer, NULL::smallint, NULL::boolean,
            NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF cardinality(expired) > 0 THEN
        -- An expired lease of this worker would collide with a new lease on the same item.
        UPDATE labeling_assignment SET status = 'released' WHERE id = ANY (expired) AND status = 'open';
    END IF;

    IF p_draw_gold THEN
        -- A gold item the worker has never been served; gold checks the worker, so no capacity.
        SELECT i.id, i.width, i.height, i.channels, i.is_gold INTO cand
        FROM labeling_item i
        WHERE i.project_id = p_project AND NOT i.is_holdout AND i.is_gold
          AND i.expert_answer_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM labeling_vote v WHERE v.item_id = i.id AND v.worker_id = p_worker)
          AND NOT EXISTS (SELECT 1 FROM labeling_assignment a WHERE a.item_id = i.id AND a.worker_id = p_worker)
        ORDER BY random() LIMIT 1;
        IF FOUND THEN
            -- A conflict means the same worker's concurrent request leased it first.
            INSERT INTO labeling_assignment (project_id, item_id, worker_id, status, created_at, expires_at)
            VALUES (p_project, cand.id, p_worker, 'open', p_now, p_expires)
            ON CONFLICT DO NOTHING RETURNING id INTO new_id;
        END IF;
    END IF;

    IF new_id IS NULL THEN
        FOR attempt IN 1..p_max_attempts LOOP
            -- labeling.services.assignment._DEFAULT_CANDIDATE_SQL, the same filter and order.
            SELECT i.id, i.width, i.height, i.channels, i.is_gold INTO cand
            FROM labeling_item i
            WHERE i.project_id = p_project AND NOT i.is_gold AND i.vote_count < i.votes_wanted
              AND NOT (i.id = ANY (tried))
              AND NOT EXISTS (SELECT 1 FROM labeling_vote v WHERE v.item_id = i.id AND v.worker_id = p_worker)
              AND NOT EXISTS (SELECT 1 FROM labeling_assignment a
                              WHERE a.item_id = i.id AND a.worker_id = p_worker AND a.status = 'open')
              AND i.vote_count + (SELECT count(*) FROM labeling_assignment a
                                  WHERE a.item_id = i.id AND a.status = 'open' AND a.expires_at > p_now)
                  < i.votes_wanted
            ORDER BY i.vote_count, COALESCE(i.uncertainty, -1.0) DESC, i.id
            LIMIT 1 FOR UPDATE OF i SKIP LOCKED;
            IF NOT FOUND THEN
                -- Every candidate is held by a concurrent request: wait for one rather than
                -- answer "nothing left" while slots may still free up. (The same statement
                -- with a waiting lock: a lock clause cannot be a parameter, and EXECUTE of a
                -- built string would plan it again on every call.)
                SELECT i.id, i.width, i.height, i.channels, i.is_gold INTO cand
                FROM labeling_item i
                WHERE i.project_id = p_project AND NOT i.is_gold AND i.vote_count < i.votes_wanted
                  AND NOT (i.id = ANY (tried))
                  AND NOT EXISTS (SELECT 1 FROM labeling_vote v WHERE v.item_id = i.id AND v.worker_id = p_worker)
                  AND NOT EXISTS (SELECT 1 FROM labeling_assignment a
                                  WHERE a.item_id = i.id AND a.worker_id = p_worker AND a.status = 'open')
                  AND i.vote_count + (SELECT count(*) FROM labeling_assignment a
                                      WHERE a.item_id = i.id AND a.status = 'open' AND a.expires_at > p_now)
                      < i.votes_wanted
                ORDER BY i.vote_count, COALESCE(i.uncertainty, -1.0) DESC, i.id
                LIMIT 1 FOR UPDATE OF i;
                EXIT WHEN NOT FOUND;
            END IF;
            -- The row is ours now; this statement's fresh snapshot sees every committed lease.
            SELECT i.votes_wanted - i.vote_count
                   - (SELECT count(*) FROM labeling_assignment a
                      WHERE a.item_id = i.id AND a.status = 'open' AND a.expires_at > p_now)
              INTO free FROM labeling_item i WHERE i.id = cand.id;
            IF free > 0 THEN
                INSERT INTO labeling_assignment (project_id, item_id, worker_id, status, created_at, expires_at)
                VALUES (p_project, cand.id, p_worker, 'open', p_now, p_expires)
                ON CONFLICT DO NOTHING RETURNING id INTO new_id;
                EXIT WHEN new_id IS NOT NULL;
            END IF;
            tried := tried || cand.id;
        END LOOP;
    END IF;

    IF new_id IS NULL THEN
        RETURN QUERY SELECT 'none', NULL::text, NULL::bigint, NULL::timestamptz, NULL::bigint,
            NULL::integer, NULL::integer, NULL::smallint, NULL::boolean, p.votes_today, p.voted_open
            FROM quorum_worker_progress(p_worker, p_project, p_midnight) p;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'new', NULL::text, new_id, p_expires, cand.id, cand.width, cand.height,
        cand.channels, cand.is_gold, p.votes_today, p.voted_open
        FROM quorum_worker_progress(p_worker, p_project, p_midnight) p;
END;
$$;


-- outcome: 'recorded', or a refusal with nothing written: 'no_lease' (not the worker's),
-- with p_check_role 'no_project' (not a member) and 'forbidden' (not crowd), 'blocked' (detail = reason),
-- 'answered', 'unknown_class', 'late_full', 'conflict' (a unique key: a retry or a second
-- answer on the item).
CREATE OR REPLACE FUNCTION quorum_record_vote(
    p_worker integer, p_assignment bigint, p_kind text, p_label text, p_key text,
    p_source text, p_now timestamptz, p_check_role boolean, p_site_admin boolean,
    p_midnight timestamptz)
RETURNS TABLE (outcome text, detail text, vote_id bigint, project_id bigint, label_id bigint,
               was_gold boolean, gold_correct boolean, expert_label text,
               aggregate_every integer, votes_since integer, work_left boolean,
               project_created timestamptz, votes_today bigint, voted_open bigint,
               gold_below_threshold boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    l record;
    free integer;
    gold boolean;
    correct boolean;
    new_id bigint;
    expert text;
    every integer;
    since integer;
    left_open boolean;
    created timestamptz;
    min_answers integer;
    threshold double precision;
    answered bigint;
    right_answers bigint;
    below boolean := false;
BEGIN
    -- One statement: the lease (locked), the item's gold state, the membership, the class id.
    SELECT a.id, a.project_id, a.item_id, a.status, a.expires_at, i.is_gold,
           i.expert_answer_id, m.role, m.is_blocked, m.blocked_reason, m.blocked_at,
           (SELECT c.id FROM labeling_labelclass c
            WHERE c.project_id = a.project_id AND c.name = p_label LIMIT 1) AS answer_id
      INTO l
      FROM labeling_assignment a
      JOIN labeling_item i ON i.id = a.item_id
      LEFT JOIN labeling_membership m ON m.project_id = a.project_id AND m.user_id = p_worker
     WHERE a.id = p_assignment AND a.worker_id = p_worker
       FOR UPDATE OF a;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_lease', NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
            NULL::boolean, NULL::boolean, NULL::text, NULL::integer, NULL::integer, NULL::boolean,
            NULL::timestamptz, NULL::bigint, NULL::bigint, NULL::boolean;
        RETURN;
    END IF;
    -- IsProjectCrowd: members only (404 for the rest), crowd or site staff.
    outcome := CASE
        WHEN NOT p_check_role OR p_site_admin THEN NULL
        WHEN l.role IS NULL THEN 'no_project'
        WHEN l.role <> 'crowd' THEN 'forbidden'
    END;
    IF outcome IS NULL AND l.is_blocked THEN
        outcome := 'blocked';
        detail := l.blocked_reason;
    END IF;
    IF outcome IS NULL AND l.status = 'submitted' THEN
        outcome := 'answered';
    END IF;
    IF outcome IS NULL AND p_kind = 'label' AND l.answer_id IS NULL THEN
        outcome := 'unknown_class';
    END IF;
    gold := l.is_gold AND l.expert_answer_id IS NOT NULL;
    IF outcome IS NULL AND l.expires_at <= p_now AND NOT gold THEN
        -- Late answers may not push an item past its votes; gold needs no capacity.
        PERFORM 1 FROM labeling_item i WHERE i.id = l.item_id FOR UPDATE;
        SELECT i.votes_wanted - i.vote_count
               - (SELECT count(*) FROM labeling_assignment a
                  WHERE a.item_id = i.id AND a.status = 'open' AND a.expires_at > p_now)
          INTO free FROM labeling_item i WHERE i.id = l.item_id;
        IF free <= 0 THEN
            outcome := 'late_full';
        END IF;
    END IF;
    IF outcome IS NOT NULL THEN
        RETURN QUERY SELECT outcome, detail, NULL::bigint, l.project_id, NULL::bigint,
            NULL::boolean, NULL::boolean, NULL::text, NULL::integer, NULL::integer, NULL::boolean,
            NULL::timestamptz, NULL::bigint, NULL::bigint, NULL::boolean;
        RETURN;
    END IF;

    -- Unsure/skip on gold is shown the answer but not scored: honesty is not an error.
    correct := CASE WHEN gold AND l.answer_id IS NOT NULL THEN l.answer_id = l.expert_answer_id END;
    INSERT INTO labeling_vote (project_id, item_id, worker_id, assignment_id, kind, label_id,
                               idempotency_key, source, was_gold, gold_correct, is_excluded, created_at)
    VALUES (l.project_id, l.item_id, p_worker, l.id, p_kind,
            CASE WHEN p_kind = 'label' THEN l.answer_id END,
            p_key, p_source, gold, correct, false, p_now)
    ON CONFLICT DO NOTHING RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        RETURN QUERY SELECT 'conflict', NULL::text, NULL::bigint, l.project_id, NULL::bigint,
            NULL::boolean, NULL::boolean, NULL::text, NULL::integer, NULL::integer, NULL::boolean,
            NULL::timestamptz, NULL::bigint, NULL::bigint, NULL::boolean;
        RETURN;
    END IF;
    -- This lease is answered; an older, expired lease of the same worker on the item is moot.
    UPDATE labeling_assignment a
       SET status = CASE WHEN a.id = l.id THEN 'submitted' ELSE 'released' END
     WHERE a.item_id = l.item_id AND a.worker_id = p_worker AND (a.id = l.id OR a.status = 'open');
    IF p_kind = 'label' THEN
        UPDATE labeling_item SET vote_count = vote_count + 1 WHERE id = l.item_id;
    END IF;
    IF gold THEN
        SELECT c.name INTO expert FROM labeling_labelclass c WHERE c.id = l.expert_answer_id;
    END IF;
    -- aggregation_due's inputs, read here instead of after the commit; the project row is
    -- every vote's shared counter, so it is updated last and held for the shortest time.
    left_open := EXISTS (
        SELECT 1 FROM labeling_item i
        WHERE i.project_id = l.project_id AND NOT i.is_gold AND i.vote_count < i.votes_wanted
        ORDER BY i.vote_count LIMIT 1);
    UPDATE labeling_project p SET votes_since_aggregation = p.votes_since_aggregation + 1
     WHERE p.id = l.project_id
    RETURNING p.aggregate_every, p.votes_since_aggregation, p.created_at, p.gold_min_answers,
              p.gold_accuracy_threshold
         INTO every, since, created, min_answers, threshold;
    IF correct IS NOT NULL THEN
        -- evaluate_worker's score (gold answers since the last block): Python blocks the
        -- worker, with its own checks, only when this says the score fell under the bar.
        SELECT count(*), count(*) FILTER (WHERE v.gold_correct) INTO answered, right_answers
          FROM labeling_vote v
         WHERE v.project_id = l.project_id AND v.worker_id = p_worker AND v.was_gold
           AND v.gold_correct IS NOT NULL AND (l.blocked_at IS NULL OR v.created_at > l.blocked_at);
        below := answered >= min_answers AND right_answers::double precision / answered < threshold;
    END IF;
    RETURN QUERY SELECT 'recorded', NULL::text, new_id, l.project_id,
        CASE WHEN p_kind = 'label' THEN l.answer_id END, gold, correct, expert, every, since,
        left_open, created, p.votes_today, p.voted_open, below
        FROM quorum_worker_progress(p_worker, l.project_id, p_midnight) p;
END;
$$;
