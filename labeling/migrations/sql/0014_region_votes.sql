-- Region tasks (issue 17), migration 0014:
-- - quorum_next_lease draws gold from items with an expert answer or an expert's regions;
-- - quorum_serve_next also returns the project's task type and region limit (the crowd lane's
--   next payload for a region project);
-- - quorum_record_vote answers 'region_project' for a vote on a region project or a region
--   answer, writing nothing: labeling.services.votes records those in Python, which checks the
--   shapes (labeling.aggregation.regions.answers) and scores a gold answer (F1, Dice) with
--   NumPy, under the same lease lock, item lock and unique constraints as every vote.

CREATE OR REPLACE FUNCTION quorum_next_lease(
    p_worker integer, p_project bigint, p_now timestamptz, p_expires timestamptz,
    p_exclude bigint[], p_gold_rate double precision, p_gold_key text, p_max_live integer,
    p_max_attempts integer, p_midnight timestamptz)
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
    today bigint;
    open_voted bigint;
BEGIN
    -- The worker's progress, read first: a lease changes neither count, and votes today are
    -- the worker's position in today's stream, which the gold schedule is keyed on.
    SELECT p.votes_today, p.voted_open INTO today, open_voted
      FROM quorum_worker_progress(p_worker, p_project, p_midnight) p;
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
                    r.height, r.channels, r.is_gold, today, open_voted;
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

    -- The item this lease is for comes after today's votes and the live leases still shown.
    IF quorum_gold_slot(today + held, p_gold_rate, p_gold_key) THEN
        -- A gold item the worker has never been served; gold checks the worker, so no capacity.
        SELECT i.id, i.width, i.height, i.channels, i.is_gold INTO cand
        FROM labeling_item i
        WHERE i.project_id = p_project AND NOT i.is_holdout AND i.is_gold
          AND (i.expert_answer_id IS NOT NULL OR i.expert_regions_id IS NOT NULL)
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
            NULL::integer, NULL::integer, NULL::smallint, NULL::boolean, today, open_voted;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'new', NULL::text, new_id, p_expires, cand.id, cand.width, cand.height,
        cand.channels, cand.is_gold, today, open_voted;
END;
$$;


DROP FUNCTION IF EXISTS quorum_serve_next(integer, bigint, boolean, timestamptz, bigint[], text, integer, integer, timestamptz);

CREATE OR REPLACE FUNCTION quorum_serve_next(
    p_worker integer, p_project bigint, p_site_admin boolean, p_now timestamptz,
    p_exclude bigint[], p_gold_key text, p_max_live integer,
    p_max_attempts integer, p_midnight timestamptz)
RETURNS TABLE (outcome text, detail text, lease_id bigint, lease_expires timestamptz,
               item_id bigint, width integer, height integer, channels smallint, is_gold boolean,
               votes_today bigint, voted_open bigint, project_created timestamptz,
               class_names text[], class_indexes integer[], task_type text, max_regions integer)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    c record;
BEGIN
    SELECT p.gold_rate, p.lease_minutes, p.created_at, p.task_type, p.max_regions, m.role,
           m.is_blocked, m.blocked_reason,
           ARRAY(SELECT k.name::text FROM labeling_labelclass k
                 WHERE k.project_id = p.id ORDER BY k.index) AS names,
           ARRAY(SELECT k.index::integer FROM labeling_labelclass k
                 WHERE k.project_id = p.id ORDER BY k.index) AS indexes
      INTO c
      FROM labeling_project p
      LEFT JOIN labeling_membership m ON m.project_id = p.id AND m.user_id = p_worker
     WHERE p.id = p_project;
    IF NOT FOUND OR (c.role IS NULL AND NOT p_site_admin) THEN
        RETURN QUERY SELECT 'no_project', NULL::text, NULL::bigint, NULL::timestamptz,
            NULL::bigint, NULL::integer, NULL::integer, NULL::smallint, NULL::boolean,
            NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::text[], NULL::integer[],
            NULL::text, NULL::integer;
        RETURN;
    END IF;
    IF c.role NOT IN ('crowd', 'admin') AND NOT p_site_admin THEN
        outcome := 'forbidden';
    ELSIF c.is_blocked THEN
        outcome := 'blocked';
        detail := c.blocked_reason;
    END IF;
    IF outcome IS NOT NULL THEN
        RETURN QUERY SELECT outcome, detail, NULL::bigint, NULL::timestamptz,
            NULL::bigint, NULL::integer, NULL::integer, NULL::smallint, NULL::boolean,
            NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::text[], NULL::integer[],
            NULL::text, NULL::integer;
        RETURN;
    END IF;
    -- A lease is not worth a wait for the disk: this transaction's commit returns before its
    -- WAL is flushed (in the background within a few hundred ms). A crash in between loses
    -- the lease, nothing else: the worker's answer on it is then a 404 and the page asks for
    -- the next item; votes keep synchronous commits. Only when this call is its transaction
    -- (autocommit, as the lane calls it), so that no other write of a caller's transaction
    -- commits that way.
    IF statement_timestamp() = transaction_timestamp() THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN QUERY SELECT n.outcome, n.detail, n.lease_id, n.lease_expires, n.item_id, n.width,
        n.height, n.channels, n.is_gold, n.votes_today, n.voted_open, c.created_at, c.names,
        c.indexes, c.task_type::text, c.max_regions::integer
      FROM quorum_next_lease(p_worker, p_project, p_now,
                             p_now + make_interval(mins => c.lease_minutes), p_exclude,
                             c.gold_rate, p_gold_key, p_max_live,
                             p_max_attempts, p_midnight) n;
END;
$$;


CREATE OR REPLACE FUNCTION quorum_record_vote(
    p_worker integer, p_assignment bigint, p_kind text, p_label text, p_key text,
    p_source text, p_now timestamptz, p_check_role boolean, p_site_admin boolean,
    p_midnight timestamptz)
RETURNS TABLE (outcome text, detail text, vote_id bigint, project_id bigint, label_id bigint,
               was_gold boolean, gold_correct boolean, expert_label text,
               aggregate_every integer, votes_since integer, work_left boolean,
               project_created timestamptz, votes_today bigint, voted_open bigint,
               gold_answered integer[], gold_right integer[], gold_min_answers integer,
               gold_threshold double precision)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    l record;
    free integer;
    gold boolean;
    correct boolean;
    new_id bigint;
    since integer;
    left_open boolean;
    answered integer[];
    right_answers integer[];
    worker_today bigint;
    worker_open bigint;
BEGIN
    -- One statement: the lease (locked), the item's gold state and answer, the membership, the
    -- class id, and the project's settings (read, not locked: the vote never writes that row).
    SELECT a.id, a.project_id, a.item_id, a.status, a.expires_at, i.is_gold,
           i.expert_answer_id, m.role, m.is_blocked, m.blocked_reason, m.blocked_at,
           (SELECT c.id FROM labeling_labelclass c
            WHERE c.project_id = a.project_id AND c.name = p_label LIMIT 1) AS answer_id,
           CASE WHEN i.is_gold THEN (SELECT c.name FROM labeling_labelclass c
                                     WHERE c.id = i.expert_answer_id) END AS expert,
           p.aggregate_every, p.created_at, p.gold_min_answers, p.gold_accuracy_threshold,
           p.task_type
      INTO l
      FROM labeling_assignment a
      JOIN labeling_item i ON i.id = a.item_id
      JOIN labeling_project p ON p.id = a.project_id
      LEFT JOIN labeling_membership m ON m.project_id = a.project_id AND m.user_id = p_worker
     WHERE a.id = p_assignment AND a.worker_id = p_worker
       FOR UPDATE OF a;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_lease', NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
            NULL::boolean, NULL::boolean, NULL::text, NULL::integer, NULL::integer, NULL::boolean,
            NULL::timestamptz, NULL::bigint, NULL::bigint, NULL::integer[],
            NULL::integer[], NULL::integer, NULL::double precision;
        RETURN;
    END IF;
    -- A vote on a region project (or a region answer anywhere) is recorded by the Python
    -- service, which checks the shapes and scores a gold answer: nothing written here.
    IF l.task_type IN ('points', 'boxes', 'masks') OR p_kind = 'regions' THEN
        RETURN QUERY SELECT 'region_project', NULL::text, NULL::bigint, l.project_id, NULL::bigint,
            NULL::boolean, NULL::boolean, NULL::text, NULL::integer, NULL::integer, NULL::boolean,
            NULL::timestamptz, NULL::bigint, NULL::bigint, NULL::integer[],
            NULL::integer[], NULL::integer, NULL::double precision;
        RETURN;
    END IF;
    -- IsProjectCrowd: members only (404 for the rest), crowd, project admins or site staff.
    outcome := CASE
        WHEN NOT p_check_role OR p_site_admin THEN NULL
        WHEN l.role IS NULL THEN 'no_project'
        WHEN l.role NOT IN ('crowd', 'admin') THEN 'forbidden'
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
            NULL::timestamptz, NULL::bigint, NULL::bigint, NULL::integer[],
            NULL::integer[], NULL::integer, NULL::double precision;
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
            NULL::timestamptz, NULL::bigint, NULL::bigint, NULL::integer[],
            NULL::integer[], NULL::integer, NULL::double precision;
        RETURN;
    END IF;
    -- This lease is answered; an older, expired lease of the same worker on the item is moot.
    UPDATE labeling_assignment a
       SET status = CASE WHEN a.id = l.id THEN 'submitted' ELSE 'released' END
     WHERE a.item_id = l.item_id AND a.worker_id = p_worker AND (a.id = l.id OR a.status = 'open');
    IF p_kind = 'label' THEN
        UPDATE labeling_item SET vote_count = vote_count + 1 WHERE id = l.item_id;
    END IF;
    -- aggregation_due's input, read here instead of after the commit.
    -- The first entry of item_open_idx, whose order this is: the planner drops ORDER BY and
    -- LIMIT from an EXISTS and then picked a sequential scan, which on a project near its end
    -- read every closed item before an open one (4.9 ms a vote at 2,000 open of 40,000).
    left_open := (SELECT i.id FROM labeling_item i
                  WHERE i.project_id = l.project_id AND NOT i.is_gold AND i.vote_count < i.votes_wanted
                  ORDER BY i.vote_count, COALESCE(i.uncertainty, -1.0) DESC, i.id LIMIT 1) IS NOT NULL;
    IF correct IS NOT NULL THEN
        -- The worker's gold record since their last block, per expert class (in class id
        -- order): labeling.services.gold.gold_record's counts. Python judges them
        -- (gold.gold_standing), so the rule has one implementation for every path.
        SELECT array_agg(g.n ORDER BY g.expert), array_agg(g.r ORDER BY g.expert)
          INTO answered, right_answers
          FROM (SELECT i.expert_answer_id AS expert, count(*)::integer AS n,
                       (count(*) FILTER (WHERE v.gold_correct))::integer AS r
                  FROM labeling_vote v JOIN labeling_item i ON i.id = v.item_id
                 WHERE v.project_id = l.project_id AND v.worker_id = p_worker AND v.was_gold
                   AND v.gold_correct IS NOT NULL
                   AND (l.blocked_at IS NULL OR v.created_at > l.blocked_at)
                 GROUP BY i.expert_answer_id) g;
    END IF;
    SELECT p.votes_today, p.voted_open INTO worker_today, worker_open
      FROM quorum_worker_progress(p_worker, l.project_id, p_midnight) p;
    -- The worker's stripe of the tally is locked until the commit, so it is the last write;
    -- the other stripes are read as committed (a vote in flight there counts at its commit).
    WITH counted AS (
        INSERT INTO labeling_votetally AS t (project_id, stripe, votes)
        VALUES (l.project_id, mod(p_worker, 16), 1)
        ON CONFLICT (project_id, stripe) DO UPDATE SET votes = t.votes + 1
        RETURNING t.votes)
    SELECT counted.votes + COALESCE((SELECT sum(t.votes) FROM labeling_votetally t
                                      WHERE t.project_id = l.project_id
                                        AND t.stripe <> mod(p_worker, 16)), 0)
      INTO since FROM counted;
    RETURN QUERY SELECT 'recorded', NULL::text, new_id, l.project_id,
        CASE WHEN p_kind = 'label' THEN l.answer_id END, gold, correct,
        CASE WHEN gold THEN l.expert::text END, l.aggregate_every, since, left_open, l.created_at,
        worker_today, worker_open, answered, right_answers, l.gold_min_answers,
        l.gold_accuracy_threshold;
END;
$$;
