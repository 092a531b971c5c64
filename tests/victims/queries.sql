-- Run by Debian's sqlite3 on an in-memory database, for comparing stacks with valgrind's: the
-- database's pages stay allocated when `.exit 3` ends the program without closing it. The
-- shell command writes the program's memory map where MAPS_OUT says (its parent is sqlite3).
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
INSERT INTO t SELECT x, printf('name-%d', x), x * 0.5 FROM c;
CREATE INDEX t_name ON t(name);
SELECT count(*), sum(v) FROM t WHERE name LIKE 'name-1%';
SELECT group_concat(name) FROM (SELECT name FROM t ORDER BY v DESC LIMIT 5);
.shell [ -z "$MAPS_OUT" ] || cat /proc/$PPID/maps > "$MAPS_OUT"
.exit 3
