"""Looking at stored runs: training reports, episode replay, stick-figure rendering."""
