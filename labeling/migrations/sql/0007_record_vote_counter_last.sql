-- quorum_record_vote (migration 0007): 0004's function with the project row updated last.
--
-- Every vote adds one to its project's votes_since_aggregation, so every vote of a project
-- takes the same row lock and holds it until its commit. 0004 updated the row before the gold
-- score and the progress counts, so those reads (and a descheduled backend, on 2 cores with a
-- dozen backends) lengthened the queue of votes behind it; here the update is the last
-- statement. Same signature, checks, writes and answers as 0004's.
-- A change here is a new migration with a new file; never edit this one.

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
    worker_today bigint;
    worker_open bigint;
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
    -- aggregation_due's input, read here instead of after the commit.
    left_open := EXISTS (
        SELECT 1 FROM labeling_item i
        WHERE i.project_id = l.project_id AND NOT i.is_gold AND i.vote_count < i.votes_wanted
        ORDER BY i.vote_count LIMIT 1);
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
    -- The project row is every vote's shared counter: its lock is held until the commit, so
    -- it is the last statement, and every other read of the vote happens before it.
    UPDATE labeling_project p SET votes_since_aggregation = p.votes_since_aggregation + 1
     WHERE p.id = l.project_id
    RETURNING p.aggregate_every, p.votes_since_aggregation, p.created_at, p.gold_min_answers,
              p.gold_accuracy_threshold
         INTO every, since, created, min_answers, threshold;
    IF correct IS NOT NULL THEN
        below := answered >= min_answers AND right_answers::double precision / answered < threshold;
    END IF;
    RETURN QUERY SELECT 'recorded', NULL::text, new_id, l.project_id,
        CASE WHEN p_kind = 'label' THEN l.answer_id END, gold, correct, expert, every, since,
        left_open, created, worker_today, worker_open, below;
END;
$$;
