-- Prefect's own metadata lives in a separate database on the same server.
CREATE DATABASE prefect;
