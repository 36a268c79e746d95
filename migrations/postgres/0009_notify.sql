-- Wake-ups across instances: new queued events and new (or operator-retried) jobs NOTIFY the
-- instances that LISTEN, so work starts promptly wherever it was accepted. Notifications are
-- delivered at commit and merged within a transaction; polling remains the fallback.
CREATE FUNCTION switchboard_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('switchboard_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER event_queue_notify AFTER INSERT ON event_queue
    FOR EACH STATEMENT EXECUTE FUNCTION switchboard_notify_events();

CREATE FUNCTION switchboard_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('switchboard_jobs', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_insert_notify AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION switchboard_notify_jobs();
CREATE TRIGGER jobs_retry_notify AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status <> 'pending')
    EXECUTE FUNCTION switchboard_notify_jobs();
