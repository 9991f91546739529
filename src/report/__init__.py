"""The course report: task 1 computed, every stage's section, Markdown and offline HTML."""
