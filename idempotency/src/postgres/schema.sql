-- floodwall-idempotency's PostgreSQL schema, version 1. `__T__` is the table name.
-- Applied by `PostgresStore::migrate`, in one transaction under an advisory lock, so that
-- several instances starting together migrate once. Every statement is idempotent.

CREATE TABLE IF NOT EXISTS __T__ (
    -- The caller's key (scoped per principal by the caller), at most 200 bytes; longer keys
    -- are stored as `#` and their SHA-256.
    key         bytea       PRIMARY KEY,
    -- 'p' in progress, 'c' completed, 'x' released.
    state       "char"      NOT NULL,
    -- The fencing token of the claim that holds (or last held) the key.
    token       bigint      NOT NULL,
    -- SHA-256 of the request.
    fingerprint bytea       NOT NULL,
    -- While in progress: when the holder's lease ends.
    lease_until timestamptz NOT NULL,
    -- The row is forgotten after this: lease + grace in progress, the retention completed.
    expires_at  timestamptz NOT NULL,
    -- The stored result (floodwall's versioned envelope).
    record      bytea,
    -- The last committed recovery point of a phased run.
    phase       text
);

-- The sweeper deletes the oldest expired rows first, in small batches.
CREATE INDEX IF NOT EXISTS __T___expires_at ON __T__ (expires_at);

-- Tokens grow across claims, releases, expiries and deleted rows alike.
CREATE SEQUENCE IF NOT EXISTS __T___token;

-- Claims `k`, or answers its record, its holder or a mismatch. One row lock, database time.
-- Returns (kind, token or wait in µs, record): kind 'n' claimed, 'c' completed,
-- 'i' in progress, 'm' mismatch.
CREATE OR REPLACE FUNCTION __T___begin(k bytea, fp bytea, lease_us bigint, grace_us bigint)
RETURNS TABLE (o_kind "char", o_num bigint, o_record bytea)
LANGUAGE plpgsql AS $$
DECLARE
    r __T__%ROWTYPE;
    t_now timestamptz;
    tok bigint;
    keep text;
    until timestamptz;
BEGIN
    LOOP
        t_now := clock_timestamp();
        SELECT * INTO r FROM __T__ WHERE key = k FOR UPDATE;
        IF NOT FOUND THEN
            tok := nextval('__T___token');
            INSERT INTO __T__ (key, state, token, fingerprint, lease_until, expires_at)
            VALUES (k, 'p', tok, fp, t_now + make_interval(secs => lease_us / 1e6),
                    t_now + make_interval(secs => (lease_us + grace_us) / 1e6))
            ON CONFLICT (key) DO NOTHING;
            IF FOUND THEN
                RETURN QUERY SELECT 'n'::"char", tok, NULL::bytea;
                RETURN;
            END IF;
            -- Another caller inserted it meanwhile: read what it wrote.
            CONTINUE;
        END IF;
        IF r.expires_at > t_now THEN
            IF r.state = 'c' THEN
                IF r.fingerprint = fp THEN
                    RETURN QUERY SELECT 'c'::"char", r.token, r.record;
                ELSE
                    RETURN QUERY SELECT 'm'::"char", 0::bigint, NULL::bytea;
                END IF;
                RETURN;
            END IF;
            IF r.state = 'p' AND r.lease_until > t_now THEN
                IF r.fingerprint = fp THEN
                    RETURN QUERY SELECT 'i'::"char",
                        ceil(extract(epoch FROM r.lease_until - t_now) * 1e6)::bigint,
                        NULL::bytea;
                ELSE
                    RETURN QUERY SELECT 'm'::"char", 0::bigint, NULL::bytea;
                END IF;
                RETURN;
            END IF;
        END IF;
        -- Claimable: released, its lease over, or expired. A recovery point carries over to
        -- the same request while the row lives.
        keep := CASE WHEN r.expires_at > t_now AND r.fingerprint = fp THEN r.phase END;
        until := t_now + make_interval(secs => (lease_us + grace_us) / 1e6);
        IF keep IS NOT NULL AND r.expires_at > until THEN
            until := r.expires_at;
        END IF;
        tok := nextval('__T___token');
        UPDATE __T__ SET state = 'p', token = tok, fingerprint = fp, record = NULL,
            lease_until = t_now + make_interval(secs => lease_us / 1e6),
            expires_at = until, phase = keep
        WHERE key = k;
        RETURN QUERY SELECT 'n'::"char", tok, NULL::bytea;
        RETURN;
    END LOOP;
END $$;

-- Stores `rec` for `retention_us` if `tok` holds `k` (1), or repeats a completion by `tok`
-- (1); else 0. Run inside the caller's transaction, it commits with the business writes.
CREATE OR REPLACE FUNCTION __T___complete(k bytea, tok bigint, rec bytea, retention_us bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r __T__%ROWTYPE;
    t_now timestamptz := clock_timestamp();
BEGIN
    SELECT * INTO r FROM __T__ WHERE key = k FOR UPDATE;
    IF NOT FOUND OR r.token <> tok OR r.expires_at <= t_now THEN
        RETURN 0;
    END IF;
    IF r.state = 'c' THEN
        RETURN 1;
    END IF;
    IF r.state <> 'p' THEN
        RETURN 0;
    END IF;
    UPDATE __T__ SET state = 'c', record = rec,
        expires_at = t_now + make_interval(secs => retention_us / 1e6)
    WHERE key = k;
    RETURN 1;
END $$;

-- Releases `tok`'s claim on `k` (1), or repeats a release by `tok` (1); else 0. A row with a
-- recovery point keeps its expiry, so the retry still finds the point.
CREATE OR REPLACE FUNCTION __T___release(k bytea, tok bigint, grace_us bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r __T__%ROWTYPE;
    t_now timestamptz := clock_timestamp();
    until timestamptz;
BEGIN
    SELECT * INTO r FROM __T__ WHERE key = k FOR UPDATE;
    IF NOT FOUND OR r.token <> tok OR r.expires_at <= t_now THEN
        RETURN 0;
    END IF;
    IF r.state = 'x' THEN
        RETURN 1;
    END IF;
    IF r.state <> 'p' THEN
        RETURN 0;
    END IF;
    until := t_now + make_interval(secs => grace_us / 1e6);
    IF r.phase IS NOT NULL AND r.expires_at > until THEN
        until := r.expires_at;
    END IF;
    UPDATE __T__ SET state = 'x', expires_at = until WHERE key = k;
    RETURN 1;
END $$;

-- Renews `tok`'s lease on `k` to `lease_us` from now (1), or 0 if `tok` no longer holds it.
CREATE OR REPLACE FUNCTION __T___extend(k bytea, tok bigint, lease_us bigint, grace_us bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    t_now timestamptz := clock_timestamp();
BEGIN
    UPDATE __T__ SET lease_until = t_now + make_interval(secs => lease_us / 1e6),
        expires_at = greatest(expires_at,
            t_now + make_interval(secs => (lease_us + grace_us) / 1e6))
    WHERE key = k AND token = tok AND state = 'p' AND expires_at > t_now;
    RETURN CASE WHEN FOUND THEN 1 ELSE 0 END;
END $$;

-- Records that `tok`'s run of `k` reached recovery point `point`, keeping the row at least
-- `retention_us` (1), or 0 if `tok` no longer holds it. Run inside the phase's transaction.
CREATE OR REPLACE FUNCTION __T___reach(k bytea, tok bigint, point text, retention_us bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    t_now timestamptz := clock_timestamp();
BEGIN
    UPDATE __T__ SET phase = point,
        expires_at = greatest(expires_at, t_now + make_interval(secs => retention_us / 1e6))
    WHERE key = k AND token = tok AND state = 'p' AND expires_at > t_now;
    RETURN CASE WHEN FOUND THEN 1 ELSE 0 END;
END $$;
