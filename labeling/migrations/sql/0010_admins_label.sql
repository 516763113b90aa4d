-- Project admins label too (issue 18): 0009's quorum_serve_next and quorum_record_vote with
-- one condition changed each, the role that may label: 'crowd' or 'admin' (IsProjectCrowd,
-- labeling.selectors.role_allows). Same signatures, checks, writes and answers otherwise.

CREATE OR REPLACE FUNCTION quorum_serve_next(
    p_worker integer, p_project bigint, p_site_admin boolean, p_now timestamptz,
    p_exclude bigint[], p_gold_draw double precision, p_max_live integer,
    p_max_attempts integer, p_midnight timestamptz)
RETURNS TABLE (outcome text, detail text, lease_id bigint, lease_expires timestamptz,
               item_id bigint, width integer, height integer, channels smallint, is_gold boolean,
               votes_today bigint, voted_open bigint, project_created timestamptz,
               class_names text[], class_indexes integer[])
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    c record;
BEGIN
    SELECT p.gold_rate, p.lease_minutes, p.created_at, m.role, m.is_blocked, m.blocked_reason,
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
            NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::text[], NULL::integer[];
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
            NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::text[], NULL::integer[];
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
        c.indexes
      FROM quorum_next_lease(p_worker, p_project, p_now,
                             p_now + make_interval(mins => c.lease_minutes), p_exclude,
                             c.gold_rate > 0 AND p_gold_draw < c.gold_rate, p_max_live,
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
               gold_below_threshold boolean)
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
    answered bigint;
    right_answers bigint;
    below boolean := false;
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
           p.aggregate_every, p.created_at, p.gold_min_answers, p.gold_accuracy_threshold
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
            NULL::timestamptz, NULL::bigint, NULL::bigint, NULL::boolean;
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
    -- aggregation_due's input, read here instead of after the commit.
    -- The first entry of item_open_idx, whose order this is: the planner drops ORDER BY and
    -- LIMIT from an EXISTS and then picked a sequential scan, which on a project near its end
    -- read every closed item before an open one (4.9 ms a vote at 2,000 open of 40,000).
    left_open := (SELECT i.id FROM labeling_item i
                  WHERE i.project_id = l.project_id AND NOT i.is_gold AND i.vote_count < i.votes_wanted
                  ORDER BY i.vote_count, COALESCE(i.uncertainty, -1.0) DESC, i.id LIMIT 1) IS NOT NULL;
    IF correct IS NOT NULL THEN
        -- evaluate_worker's score (gold answers since the last block): Python blocks the
        -- worker, with its own checks, only when this says the score fell under the bar.
        SELECT count(*), count(*) FILTER (WHERE v.gold_correct) INTO answered, right_answers
          FROM labeling_vote v
         WHERE v.project_id = l.project_id AND v.worker_id = p_worker AND v.was_gold
           AND v.gold_correct IS NOT NULL AND (l.blocked_at IS NULL OR v.created_at > l.blocked_at);
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
    IF correct IS NOT NULL THEN
        below := answered >= l.gold_min_answers
                 AND right_answers::double precision / answered < l.gold_accuracy_threshold;
    END IF;
    RETURN QUERY SELECT 'recorded', NULL::text, new_id, l.project_id,
        CASE WHEN p_kind = 'label' THEN l.answer_id END, gold, correct,
        CASE WHEN gold THEN l.expert::text END, l.aggregate_every, since, left_open, l.created_at,
        worker_today, worker_open, below;
END;
$$;
