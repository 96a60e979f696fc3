from electiond.daemon import run

run()
