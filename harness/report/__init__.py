"""The verdict (`verdict`) and the HTML / PNG report (`html`, `templates/`)."""
