-- The crowd loop without a row every vote of a project shares (migration 0008).
--
-- Every vote of a project used to end on the same project row (votes_since_aggregation + 1,
-- locked until the commit, so every vote queued on it, and a row that bloated by one version a
-- vote) and to lock it again, FOR KEY SHARE, in the deferred foreign-key checks of the vote
-- (project, label class) and the lease (project): one hot page and a multixact per commit. Now
-- a vote adds one to its worker's stripe of labeling_votetally (worker id mod 16, the model's
-- TALLY_STRIPES) and the count is the sum of the stripes; those foreign keys have no database
-- constraint (Django still cascades and restricts). The project's settings come with the lease
-- read, unlocked; the gold answer's class name too. Same signature, checks, order of writes and
-- answers as 0007's, but votes_since is the tally's sum: this stripe under its lock, the others
-- as committed.
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


-- Every vote rewrites an item and a lease and adds a vote; the default thresholds (a fifth of the
-- table) let statistics lag far enough behind for the functions' cached plans to go wrong.
-- Where autovacuum runs, these tables are analyzed and vacuumed after a few percent.
ALTER TABLE labeling_item SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE labeling_assignment SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE labeling_vote SET (autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02);
-- A project's 16 stripes are rewritten on every vote: vacuumed often, whatever the table's size.
ALTER TABLE labeling_votetally SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
