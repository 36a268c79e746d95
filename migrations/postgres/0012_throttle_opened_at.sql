-- When a throttle window opened, so that a batch of windows is opened in one statement (each
-- row's own time decides whether the window it meets has closed).
ALTER TABLE throttles ADD COLUMN opened_at BIGINT NOT NULL DEFAULT 0;
